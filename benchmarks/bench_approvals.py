"""How soon a sub-agent has its answer: `answer_approval` to the moment the waiting sub-agent reads it.

    .venv/bin/python benchmarks/bench_approvals.py [--rounds 10] [--together 8]

`effectd serve` runs over stdio with a harness profile whose CLI is `effectd.demo.asker` (Claude Code's
permission path, with no agent CLI). Each sub-agent asks before it writes; the orchestrator (this
script, an MCP client) wakes from `await_group` with the request and answers it. The sub-agent prints
the monotonic time the answer reached it (one clock for every process on Linux), so the figure is the
answer's whole trip: the tool call, the journal commit, the gate's socket, the gate's MCP result.

The baseline, in the same run and over the same connection, is a no-op tool call (`poll_effect`): the
round trip every answer pays anyway. `--together` sub-agents asking at once are answered back to back.
The goal (issue 25) is 0.5 s. Never asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters

ASKER = [sys.executable, "-m", "effectd.demo.asker", "-p", "{prompt}"]


async def call(client: Client, tool: str, **arguments: Any) -> Any:
    result = await client.call_tool(tool, arguments)
    if result.is_error:
        raise RuntimeError(f"{tool}: {result.content}")
    return result.structured_content


def params(where: Path) -> StdioServerParameters:
    config = where / "effectd.toml"
    config.write_text(f'[harness.asker]\ncommand = {json.dumps(ASKER)}\nparser = "lines"\napprovals = "claude"\n')
    db = str(where / "journal.db")
    args = ["serve", "--db", db, "--config", str(config), "--allow-command", "true"]
    return StdioServerParameters(command=str(Path(sys.executable).with_name("effectd")), args=args)


async def answered_at(client: Client, effect_id: str) -> float:
    """The monotonic time the sub-agent printed when the answer reached it."""
    cursor, text = 0, ""
    while "answered " not in text or not text.split("answered ", 1)[1].count("\n"):
        chunk = await call(client, "stream_effect", effect_id=effect_id, cursor=cursor, wait_s=10)
        cursor, text = chunk["cursor"], text + chunk["data"]
    return float(text.split("answered ", 1)[1].split("\n", 1)[0].split(" at ")[1])


async def ask_and_answer(client: Client, where: Path, count: int) -> list[float]:
    """`count` sub-agents ask at once; each is answered as soon as await_group brings its request."""
    group = f"bench-{time.monotonic_ns()}"
    for number in range(count):
        target = where / f"{group}-{number}.txt"
        await call(
            client, "dispatch_effect", harness="asker", prompt=f"write {target} x", approvals="ask",
            group=group, background=True,
        )  # fmt: skip
    sent: dict[str, float] = {}
    cursor = 0
    while len(sent) < count:
        woke = await call(client, "await_group", group=group, cursor=cursor, timeout_s=50)
        cursor = woke["cursor"]
        for approval in woke["approvals"] or []:
            sent[approval["effect_id"]] = time.monotonic()
            await call(client, "answer_approval", approval_id=approval["approval_id"], decision="allow")
    return [await answered_at(client, effect_id) - at for effect_id, at in sent.items()]


async def main(rounds: int, together: int) -> None:
    with tempfile.TemporaryDirectory(prefix="effectd-bench-approvals-") as tmp:
        where = Path(tmp)
        async with Client(params(where), read_timeout_seconds=70) as client:
            probe = await call(client, "dispatch_effect", command=["true"], wait_s=10)
            noop = []
            for _ in range(50):
                began = time.monotonic()
                await call(client, "poll_effect", effect_id=probe["effect_id"])
                noop.append(time.monotonic() - began)
            one = [latency for _ in range(rounds) for latency in await ask_and_answer(client, where, 1)]
            batch = await ask_and_answer(client, where, together)
    report("no-op tool call (baseline)", noop)
    report(f"answer to sub-agent, one at a time ({rounds})", one)
    report(f"answer to sub-agent, {together} waiting at once", batch)


def report(name: str, seconds: list[float]) -> None:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    print(f"{name:<48} p50 {statistics.median(ms):7.1f} ms   p95 {p95:7.1f} ms   max {ms[-1]:7.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--together", type=int, default=8)
    options = parser.parse_args()
    anyio.run(main, options.rounds, options.together)
