"""A plan step lists files, one sub-agent per file runs side by side, a review reads them all; then a
pipe, and a resume after a failure. One `dispatch_flow` call each, over stdio.

    python client_examples/plan_fanout_review.py [--files 6]

1. `plan` answers with a JSON list of files. `document` has `for_each: "{{steps.plan.result.answer}}"`:
   when the plan ends it becomes one effect per file (`{{item}}`, `{{index}}` in its prompt), run
   side by side under the flow's `max_concurrency`. Its result is the list of their results.
2. `review` fails on purpose (the fake agent's `--fail`: think of a missing API key). The flow fails.
3. The cause fixed, the same flow is dispatched again with `resume: <first flow id>`: `plan` and
   `document` are taken from the first run (`cached: true`, `reused_from`), only `review` runs.
4. A pipe: `count` reads `emit`'s output on stdin while `emit` still runs (`{"step": "emit",
   "pipe": true}`), so `emit | count` takes about as long as the longer of the two.

The agents are effectd's fake harness (`python -m effectd.harness.fake`), so this runs with no agent
CLI and no network; with Claude Code, use `harness="claude"` and real prompts instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

CONFIG = """\
max_concurrency = 8

[commands]
allow = [{python}]

[harness.fake-claude]
command = [{python}, "-m", "effectd.harness.fake", "{{args}}", "{{prompt}}"]
parser = "claude"

[harness.fake-claude.env]
FAKE_HARNESS_STEPS = "2"
FAKE_HARNESS_DELAY = "0.25"
"""
EMIT = "import time\nfor i in range(8):\n    print(f'event {i}', flush=True)\n    time.sleep(0.15)\n"
COUNT = "import sys, time\nn = 0\nfor line in sys.stdin:\n    n += 1\n    time.sleep(0.15)\nprint(f'{n} events')\n"


def effectd_executable() -> str:
    beside = Path(sys.executable).parent / "effectd"
    found = str(beside) if beside.exists() else shutil.which("effectd")
    if found is None:
        sys.exit("effectd is not installed in this environment: run `pip install -e .` in the repository")
    return found


async def call(client: Client, tool: str, **arguments: Any) -> Any:
    result = await client.call_tool(tool, arguments)
    if result.is_error:
        raise RuntimeError(" ".join(getattr(block, "text", "") for block in result.content))
    return result.structured_content


def steps(files: list[str], review_fails: bool) -> list[dict[str, Any]]:
    return [
        {
            "id": "plan",
            "harness": "fake-claude",
            "prompt": "Which modules need docs? Answer with a JSON list of paths.",
            "args": ["--steps", "1", "--answer", json.dumps(files)],
        },
        {
            "id": "document",
            "needs": ["plan"],
            "for_each": "{{steps.plan.result.answer}}",
            "harness": "fake-claude",
            "prompt": "Write the docs of {{item}} ({{index}} of the plan).",
        },
        {
            "id": "review",
            "needs": ["document"],
            "harness": "fake-claude",
            "prompt": "Review the docs of {{steps.plan.result.answer}}.",
            "args": ["--steps", "1", *(["--fail"] if review_fails else [])],
        },
    ]


def show(flow: dict[str, Any]) -> None:
    print(f"flow {flow['flow_id']}: {flow['status']}, wall {flow['wall_s']:.2f} s, cached steps {flow['cached_steps']}")
    for step in flow["steps"]:
        how = f"cached from {step['reused_from']}" if step["cached"] else f"{step['duration_s'] or 0:.2f} s"
        if step["children"]:
            how = f"fanned out into {len(step['children'])} effects:"
        print(f"  {step['step_id']:<9} {step['status']:<10} {how}{': ' + step['error'] if step['error'] else ''}")
        for child in step["children"]:
            took = child["duration_s"] or 0
            print(f"    [{child['index']}] {child['status']:<10} {took:.2f} s  {child['effect_id']}")


async def main(workdir: Path, files: int) -> None:
    config = workdir / "effectd.toml"
    config.write_text(CONFIG.format(python=json.dumps(sys.executable)))
    server = StdioServerParameters(
        command=effectd_executable(),
        args=["serve", "--config", str(config), "--db", str(workdir / "journal.db")],
        env=dict(os.environ),
    )
    planned = [f"src/module_{n}.py" for n in range(files)]
    async with Client(server, read_timeout_seconds=70) as client:
        print("1-2. plan -> document (one sub-agent per file) -> review (fails on purpose):")
        first = await call(client, "dispatch_flow", steps=steps(planned, review_fails=True), max_concurrency=8)
        show(first)
        document = next(s for s in first["steps"] if s["step_id"] == "document")
        results = (await call(client, "poll_effect", effect_id=document["effect_id"]))["result"]
        print(f"  document's result: {len(results)} results, the first answering {results[0]['answer']!r}")

        print("\n3. the cause fixed, the same flow again with resume:")
        second = await call(client, "dispatch_flow", steps=steps(planned, review_fails=False), resume=first["flow_id"])
        show(second)
        ran = [s["step_id"] for s in second["steps"] if not s["cached"]]
        print(f"  ran again: {', '.join(ran)}")

        print("\n4. a pipe: emit | count")
        piped = await call(
            client,
            "dispatch_flow",
            steps=[
                {"id": "emit", "command": [sys.executable, "-c", EMIT]},
                {"id": "count", "needs": [{"step": "emit", "pipe": True}], "command": [sys.executable, "-c", COUNT]},
            ],
        )
        emit, count = piped["steps"]
        counted = (await call(client, "stream_effect", effect_id=count["effect_id"]))["data"].strip()
        print(
            f"  emit {emit['duration_s']:.2f} s, count {count['duration_s']:.2f} s, the flow {piped['wall_s']:.2f} s "
            f"wall (not their sum): count printed {counted!r}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=6, help="how many files the plan lists (default 6)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="effectd-flow-example-") as tmp:
        anyio.run(main, Path(tmp), options.files)
