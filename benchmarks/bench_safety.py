"""What running agents safely costs, and how fast the server's death takes its effects with it.

- **death**: `effectd serve` over stdio runs N effects, each with a `setsid` daemon and a subshell
  grandchild; the server is SIGKILLed, and the time until the last of the 2N grandchildren is gone
  is taken (the keeper, `effectd.runner.keeper`, kills them).

Alone: `.venv/bin/python -m benchmarks.bench_safety [--effects N] [--rounds R]`.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path

import anyio
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

TWO_GRANDCHILDREN = (
    "(setsid sh -c 'echo daemon $$; exec sleep 300' &);"
    "(sh -c 'echo subshell $$; exec sleep 300' &);"
    "sleep 0.1; echo server $PPID; exec sleep 300"
)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


async def death_round(workdir: Path, effects: int) -> float:
    """Seconds from the server's SIGKILL until every grandchild of its `effects` effects is gone."""
    binary = Path(sys.executable).parent / "effectd"
    params = StdioServerParameters(
        command=str(binary),
        args=["serve", "--db", str(workdir / "journal.db"), "--allow-any-command", "--max-concurrency", str(effects)],
        cwd=str(workdir),
    )
    grandchildren: list[int] = []
    took = float("nan")
    with suppress(Exception, BaseExceptionGroup):  # the transport breaks with the server
        async with Client(params, read_timeout_seconds=120) as client:
            ids = []
            for _ in range(effects):
                result = await client.call_tool(
                    "dispatch_effect", {"command": ["sh", "-c", TWO_GRANDCHILDREN], "background": True}
                )
                ids.append(result.structured_content["effect_id"])  # type: ignore[index]
            server = 0
            for effect_id in ids:
                text, cursor = "", 0
                while "server" not in text:
                    chunk = await client.call_tool(
                        "stream_effect", {"effect_id": effect_id, "cursor": cursor, "wait_s": 5}
                    )
                    content = chunk.structured_content or {}
                    text, cursor = text + content["data"], content["cursor"]
                grandchildren += [int(pid) for pid in re.findall(r"(?:daemon|subshell) (\d+)", text)]
                server = int(re.search(r"server (\d+)", text).group(1))  # type: ignore[union-attr]
            started = time.perf_counter()
            os.kill(server, signal.SIGKILL)
            while any(_alive(pid) for pid in grandchildren) and time.perf_counter() - started < 10:
                time.sleep(0.001)  # noqa: ASYNC251 - a tight poll of /proc: nothing else runs meanwhile
            took = time.perf_counter() - started
    for pid in grandchildren:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if len(grandchildren) != 2 * effects:
        raise RuntimeError(f"{len(grandchildren)} grandchildren seen, {2 * effects} expected")
    return took


async def _main(effects: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="effectd-bench-") as tmp:
        samples = []
        for n in range(rounds):
            workdir = Path(tmp) / f"round{n}"
            workdir.mkdir()
            samples.append(await death_round(workdir, effects))
        print(
            f"death: {effects} effects, {2 * effects} grandchildren: gone {statistics.median(samples) * 1000:.0f} ms "
            f"after the server's SIGKILL (median of {rounds}; min {min(samples) * 1000:.0f}, "
            f"max {max(samples) * 1000:.0f})"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--effects", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    anyio.run(_main, options.effects, options.rounds)
