"""Five sub-agents side by side, their results taken as each one completes.

    python client_examples/parallel_subagents.py

The sub-agents are effectd's fake harness (`python -m effectd.harness.fake`), which prints what
`claude -p PROMPT --output-format stream-json --verbose` prints, so this runs with no agent CLI and no
network. To use the real Claude Code instead, dispatch with `harness="claude"` (a built-in profile).

It shows:
- a harness profile defined in an effectd.toml;
- five background dispatches into one group, each returning at once;
- `await_group` with mode "any" and a cursor: each call returns the sub-agents that finished since the
  last one, so results are handled as they arrive, each exactly once;
- the run's cost and tokens from `list_effects(run_id=...)`'s `summary`.
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

# A harness profile: the argv template ({prompt} is replaced), the parser that reads its output
# (here Claude Code's stream-json) and environment for it. FAKE_HARNESS_* tune the fake agent.
CONFIG = """\
[harness.fake-claude]
command = [{python}, "-m", "effectd.harness.fake", "{{prompt}}"]
parser = "claude"
timeout_s = 300

[harness.fake-claude.env]
FAKE_HARNESS_STEPS = "3"
FAKE_HARNESS_DELAY = "0.15"
"""

# What each sub-agent is asked, and (for the fake) how long it takes, what it answers and what it costs.
TASKS = [
    ("review-cli", "Review server/cli.py for bugs", 0.25, "cli.py: no bugs, one unclear message", 0.0112),
    ("review-journal", "Review server/journal for bugs", 0.1, "journal: migrations look right", 0.0094),
    ("write-tests", "Write tests for the parsers", 0.3, "added 6 parser tests", 0.0231),
    ("docs", "Update the README for flows", 0.05, "README: flows section written", 0.0047),
    ("triage", "Triage the open issues", 0.18, "3 bugs, 2 features, 1 question", 0.0078),
]


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


async def main(workdir: Path) -> None:
    config = workdir / "effectd.toml"
    config.write_text(CONFIG.format(python=json.dumps(sys.executable)))  # a JSON string is a TOML string
    server = StdioServerParameters(
        command=effectd_executable(),
        args=["serve", "--config", str(config), "--db", str(workdir / "journal.db")],
        env=dict(os.environ),  # the stdio client passes only a few variables unless told
    )
    run_id = f"review-{int(time.time())}"  # a run is created on first use of a new id
    group = "subagents"

    async with Client(server, read_timeout_seconds=70) as client:
        started = time.monotonic()
        labels = {}
        for label, prompt, delay, answer, cost in TASKS:
            record = await call(
                client,
                "dispatch_effect",
                harness="fake-claude",
                prompt=prompt,
                # Extra CLI arguments for this run (with the real `claude` profile: e.g. ["--model", "..."]).
                args=["--delay", str(delay), "--answer", answer, "--cost", str(cost)],
                background=True,  # return at once; the sub-agents run side by side
                group=group,
                run_id=run_id,
                label=label,
            )
            labels[record["effect_id"]] = label
            print(f"dispatched {label:<15} {record['effect_id']}")

        # Take results as they complete: each call waits (at most timeout_s) until at least one more
        # sub-agent has finished after `cursor`, and returns those in the order they finished.
        print("\nresults as they complete:")
        cursor, finished = 0, 0
        while finished < len(TASKS):
            answer = await call(client, "await_group", group=group, mode="any", cursor=cursor, timeout_s=30)
            cursor = answer["cursor"]  # pass it back: every completion is delivered exactly once
            for record in answer["done"]:
                finished += 1
                result = record["result"] or {}  # the claude parser's result: answer, cost, usage, turns...
                print(
                    f"  [{finished}/{len(TASKS)}] +{time.monotonic() - started:4.1f} s  {record['label']:<15} "
                    f"{record['status']:<9} {record['duration_s']:.2f} s  ${result.get('cost_usd') or 0:.4f}  "
                    f"{result.get('answer')!r}"
                )
            if answer["timed_out"]:
                print(f"  still waiting for {answer['pending']}")

        # The run's summary: counts by status, and the cost and tokens of its harness effects.
        listing = await call(client, "list_effects", run_id=run_id)
        summary = listing["summary"]
        work = sum(record["duration_s"] for record in listing["effects"])
        print(
            f"\nrun {run_id}: {summary['by_status']}, total cost ${summary['cost_usd']:.4f}, "
            f"tokens {summary['tokens']['input_tokens']} in / {summary['tokens']['output_tokens']} out"
        )
        print(f"{work:.2f} s of sub-agent time in {time.monotonic() - started:.2f} s of wall time")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="effectd-subagents-") as tmp:
        anyio.run(main, Path(tmp))
