"""Race sub-agents on one task and keep the first good answer; stop a swarm at its budget.

    python client_examples/race_and_budget.py

The sub-agents are effectd's fake harness (`python -m effectd.harness.fake`), which prints what
`claude -p PROMPT --output-format stream-json --verbose` prints, cost and token usage included, so
this runs with no agent CLI and no network. With the real Claude Code, dispatch `harness="claude"`.

It shows:
- a race: N sub-agents on one task, `await_group(mode="first_success")`. The call returns with the
  first one that succeeded; the others are cancelled with reason `superseded`, and their processes
  are gone before the call returns (a sub-agent that failed first does not win);
- a quorum: three reviewers, `mode="quorum", k=2`: the first two approvals decide, the third stops;
- a budget: `set_budget(group=..., max_cost_usd=...)`, then a swarm that spends past it. At the
  limit its running and waiting sub-agents are cancelled with reason `budget`, a later dispatch is
  refused with what was spent, and `list_effects`' summary shows spending against the budget.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

CONFIG = """\
[harness.fake-claude]
command = [{python}, "-m", "effectd.harness.fake", "{{args}}", "{{prompt}}"]
parser = "claude"
timeout_s = 300
"""

# The racers: how many turns each takes (0.2 s apiece), what it costs, and whether it fails.
RACERS = [
    ("racer-1", 20, 0.031, False),
    ("racer-2", 4, 0.018, False),  # the quickest that succeeds: it wins
    ("racer-3", 1, 0.004, True),  # fails first: a failure does not decide the race
    ("racer-4", 30, 0.052, False),
]
REVIEWERS = [("review-a", 3), ("review-b", 5), ("review-c", 40)]
# The swarm: five workers at $0.02 each under a $0.05 budget; the quick three cross it.
SWARM = [("worker-1", 2), ("worker-2", 3), ("worker-3", 4), ("worker-4", 60), ("worker-5", 80)]


def effectd_executable() -> str:
    """The `effectd` script installed beside this Python, else the one on PATH."""
    beside = Path(sys.executable).parent / "effectd"
    found = str(beside) if beside.exists() else shutil.which("effectd")
    if found is None:
        sys.exit("effectd is not installed in this environment: run `pip install -e .` in the repository")
    return found


async def call(client: Client, tool: str, **arguments: Any) -> Any:
    """Calls a tool and returns its structured result; raises with the server's message if it refused."""
    result = await client.call_tool(tool, arguments)
    if result.is_error:
        raise RuntimeError(" ".join(getattr(block, "text", "") for block in result.content))
    return result.structured_content


async def sub_agent(client: Client, group: str, label: str, turns: int, cost: float, *extra: str) -> str:
    record = await call(
        client,
        "dispatch_effect",
        harness="fake-claude",
        prompt=f"{label}: fix the flaky test in tests/test_cache.py",
        args=["--steps", str(turns), "--delay", "0.2", "--cost", str(cost), "--answer", f"{label}: done", *extra],
        background=True,
        group=group,
        label=label,
    )
    return str(record["effect_id"])


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def race(client: Client) -> None:
    print(f"1. a race: {len(RACERS)} sub-agents on one task, the first success wins")
    ids = {}
    for label, turns, cost, fails in RACERS:
        ids[await sub_agent(client, "race", label, turns, cost, *(["--fail"] if fails else []))] = label
    await anyio.sleep(0.5)  # let them all start, so there are processes to stop
    pids = {i: (await call(client, "poll_effect", effect_id=i))["pid"] for i in ids}
    started = time.monotonic()
    answer = await call(client, "await_group", group="race", mode="first_success", timeout_s=30)
    (winner,) = answer["winners"]
    print(f"   winner after {time.monotonic() - started:.1f} s: {winner['label']} ({winner['result']['answer']!r})")
    for record in answer["done"]:
        if record["effect_id"] == winner["effect_id"]:
            continue
        how = record["status"] + (f" ({record['cancel_reason']})" if record["cancel_reason"] else "")
        gone = "process gone" if not alive(pids[record["effect_id"]]) else "STILL ALIVE"
        print(f"   {record['label']:<9} {how:<22} {gone}")
    print(f"   satisfied={answer['satisfied']} complete={answer['complete']} pending={answer['pending']}")


async def quorum(client: Client) -> None:
    print("\n2. a quorum: three reviewers, two approvals decide")
    for label, turns in REVIEWERS:
        await sub_agent(client, "review", label, turns, 0.01)
    answer = await call(client, "await_group", group="review", mode="quorum", k=2, timeout_s=30)
    print(f"   approved by {[w['label'] for w in answer['winners']]}; satisfied={answer['satisfied']}")
    for record in answer["done"]:
        print(f"   {record['label']:<9} {record['status']:<10} {record['cancel_reason'] or ''}")


async def budget(client: Client) -> None:
    print("\n3. a budget: five workers at $0.02 each, $0.05 for the group")
    answer = await call(client, "set_budget", group="swarm", max_cost_usd=0.05)
    print(f"   set_budget: {answer}")
    ids = [await sub_agent(client, "swarm", label, turns, 0.02) for label, turns in SWARM]
    done = await call(client, "await_group", effect_ids=ids, timeout_s=50)
    for record in done["done"]:
        cost = (record["result"] or {}).get("cost_usd")
        shown = f"${cost:.2f}" if cost is not None else ""
        print(f"   {record['label']:<9} {record['status']:<10} {record['cancel_reason'] or '':<7} {shown}")
    try:
        await call(client, "dispatch_effect", harness="fake-claude", prompt="one more", group="swarm")
    except RuntimeError as refused:
        print(f"   a later dispatch is refused: {refused}")
    summary = (await call(client, "list_effects", group="swarm"))["summary"]
    spent = summary["budget"]
    print(
        f"   summary: {summary['by_status']}; budget ${spent['spent_cost_usd']:.2f} spent of "
        f"${spent['max_cost_usd']:.2f}, exceeded={spent['exceeded']}"
    )


async def main(workdir: Path) -> None:
    config = workdir / "effectd.toml"
    config.write_text(CONFIG.format(python=json.dumps(sys.executable)))
    server = StdioServerParameters(
        command=effectd_executable(),
        args=["serve", "--config", str(config), "--db", str(workdir / "journal.db")],
        env=dict(os.environ),
    )
    async with Client(server, read_timeout_seconds=70) as client:
        await race(client)
        await quorum(client)
        await budget(client)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="effectd-race-") as tmp:
        anyio.run(main, Path(tmp))
