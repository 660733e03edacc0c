"""What running agents safely costs, and how fast the server's death takes its effects with it.

- **cost**: from `dispatch_effect` (foreground, the in-memory MCP client, the local runner) to the
  `succeeded` record of `/bin/true`, without any of it (the baseline), with `limits`, with
  `sandbox: true`, with both, and with an allow-list sandbox. The variants take turns, round by
  round and in a turning order, in one process, so load on the machine falls on each alike.
- **death**: `effectd serve` over stdio runs N effects, each with a `setsid` daemon and a subshell
  grandchild; the server is SIGKILLed, and the time until the last of the 2N grandchildren is gone
  is taken (the keeper, `effectd.runner.keeper`, kills them).

Alone: `.venv/bin/python -m benchmarks.bench_safety [--effects N] [--rounds R] [--dispatches D]`.
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

from effectd.app import build_server
from effectd.config.settings import build_settings
from effectd.engine.core import Engine
from effectd.runner.cgroups import Cgroups
from effectd.runner.controllers import Controllers
from effectd.runner.sandbox import Sandboxes

LIMITS = {"memory_mb": 512, "pids": 256, "cpu": 1.0}
ALLOW = {"network": {"allow": ["127.0.0.1:9"]}}

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


def variants() -> dict[str, dict[str, object]]:
    """The dispatch arguments of each variant this host can run (a limit or a sandbox it cannot make is left out)."""
    v2 = Cgroups.find()
    limits = Controllers.find(v2.root if v2 is not None else None, prepare=False).refusal(list(LIMITS)) is None
    sandbox = Sandboxes("bwrap").problem() is None
    chosen: dict[str, dict[str, object]] = {"baseline": {}}
    if limits:
        chosen["limits"] = {"limits": LIMITS}
    if sandbox:
        chosen["sandbox: true"] = {"sandbox": True}
    if sandbox and limits:
        chosen["sandbox + limits"] = {"sandbox": True, "limits": LIMITS}
    if sandbox:
        chosen["sandbox, allow-list"] = {"sandbox": ALLOW}
    return chosen


async def cost(workdir: Path, dispatches: int) -> dict[str, list[float]]:
    """Seconds from dispatch to a `succeeded` record of `/bin/true`, per variant, `dispatches` each."""
    settings = build_settings({}, db=workdir / "journal.db", allow_any_command=True)
    chosen = variants()
    samples: dict[str, list[float]] = {name: [] for name in chosen}
    async with Engine.open(settings) as engine, Client(build_server(engine)) as client:
        for extra in chosen.values():  # one warm-up each: the sandbox probe, the first cgroups
            await client.call_tool("dispatch_effect", {"command": ["/bin/true"], **extra})
        names = list(chosen)
        for round_ in range(dispatches):  # the order turns each round: no variant always follows another
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                extra = chosen[name]
                started = time.perf_counter()
                result = await client.call_tool("dispatch_effect", {"command": ["/bin/true"], **extra})
                samples[name].append(time.perf_counter() - started)
                record = result.structured_content or {}
                if record.get("status") != "succeeded":
                    raise RuntimeError(f"{name}: {record.get('status')} {record.get('error')}")
    return samples


async def _main(effects: int, rounds: int, dispatches: int) -> None:
    with tempfile.TemporaryDirectory(prefix="effectd-bench-") as tmp:
        costs = await cost(Path(tmp), dispatches)
        base = statistics.median(costs["baseline"])
        for name, taken in costs.items():
            median = statistics.median(taken)
            print(
                f"cost: {name:<20} {median * 1000:6.1f} ms dispatch to succeeded (median of {len(taken)}; "
                f"min {min(taken) * 1000:.1f}; {median / base:.1f}x the baseline's median)"
            )
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
    parser.add_argument("--dispatches", type=int, default=30)
    options = parser.parse_args()
    anyio.run(_main, options.effects, options.rounds, options.dispatches)
