"""Runs a diamond flow on a fresh `effectd serve` over stdio and prints a timeline of its steps.

    python client_examples/flow_timeline.py

The flow is a -> (b, c) -> d, each step a sleep of known length. b and c run side by side, d
starts once both have succeeded, so the flow takes about a + max(b, c) + d, not the sum.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

# step id: (seconds, needs)
DIAMOND: dict[str, tuple[float, list[str]]] = {
    "a": (0.4, []),
    "b": (1.2, ["a"]),
    "c": (0.7, ["a"]),
    "d": (0.4, ["b", "c"]),
}
WIDTH = 48


def effectd_command() -> list[str]:
    """The `effectd` program: beside this Python, else on PATH, else the module."""
    beside = Path(sys.executable).parent / "effectd"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("effectd")
    return [found] if found else [sys.executable, "-m", "effectd.cli"]


def seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def timeline(flow: dict[str, Any]) -> str:
    """One bar per step on a shared time axis from the flow's start to its end."""
    start = seconds(flow["started_at"])
    total = max(flow["wall_s"] or 0.0, 1e-6)
    lines = [f"{'':6} 0 s{'':{WIDTH - 10}}{total:5.2f} s"]
    for step in flow["steps"]:
        if step["started_at"] is None:
            lines.append(f"{step['step_id']:6}|{' ' * WIDTH}|  {step['status']}")
            continue
        begin = round((seconds(step["started_at"]) - start) / total * WIDTH)
        end = max(begin + 1, round((seconds(step["finished_at"]) - start) / total * WIDTH))
        bar = " " * begin + "█" * (end - begin)
        needs = f"  after {', '.join(step['needs'])}" if step["needs"] else ""
        lines.append(f"{step['step_id']:6}|{bar:{WIDTH}}|  {step['duration_s']:.2f} s{needs}")
    return "\n".join(lines)


async def main() -> int:
    with tempfile.TemporaryDirectory(prefix="effectd-flow-") as tmp:
        db = Path(tmp) / "journal.db"
        program, *rest = effectd_command()
        params = StdioServerParameters(
            command=program, args=[*rest, "serve", "--allow-any-command", "--db", str(db)], cwd=tmp
        )
        steps = [
            {"id": step_id, "needs": needs, "command": [sys.executable, "-c", f"import time; time.sleep({length})"]}
            for step_id, (length, needs) in DIAMOND.items()
        ]
        async with Client(params, read_timeout_seconds=70) as client:
            result = await client.call_tool("dispatch_flow", {"steps": steps, "wait_s": 30})
            if result.is_error or result.structured_content is None:
                print(f"dispatch_flow failed: {result.content}", file=sys.stderr)
                return 1
            flow = result.structured_content
    print(f"flow {flow['flow_id']}: {flow['status']}")
    print(timeline(flow))
    print(
        f"wall {flow['wall_s']:.2f} s, steps {flow['sum_step_s']:.2f} s in all, speedup {flow['speedup']:.2f}x "
        f"(sleeps sum to {sum(length for length, _ in DIAMOND.values()):.1f} s; "
        f"critical path a-b-d is {DIAMOND['a'][0] + DIAMOND['b'][0] + DIAMOND['d'][0]:.1f} s)"
    )
    return 0 if flow["status"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(anyio.run(main))
