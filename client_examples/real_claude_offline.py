"""The whole mission with the real Claude Code, offline: watch it orchestrate sub-agents through effectd.

    python client_examples/real_claude_offline.py

A scripted model server on 127.0.0.1 plays the model (tests/model_server). The real `claude -p`
is effectd's MCP client (`--mcp-config` starting `effectd serve` on a temporary journal); the
script makes it dispatch three `harness: claude` sub-agents in the background (the real CLI
again, against the same server), take the first result with `await_group` mode `any`, cancel
the slow one (its Bash tool is in `sleep 300`), and answer. Nothing leaves this machine.

Needs the repository (it imports tests/model_server), effectd installed in this Python, and the
real CLI: `claude` from `.ci/node` (`python -m tests.model_server.clis` installs it from npm) or
on PATH. Without it, it says so and exits 0. Takes about 15-60 s (Claude Code starts four times).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.model_server.clis import bin_dir, installed_version  # noqa: E402
from tests.model_server.mission import GROUP, MCP, run_mission  # noqa: E402


def find_claude() -> Path | None:
    if installed_version("claude"):
        return bin_dir() / "claude"
    found = shutil.which("claude")
    return Path(found) if found else None


def show(event: dict[str, Any]) -> None:
    """One line per orchestrator event: its tool calls, what they returned, its text."""
    kind = event.get("type")
    if kind == "system" and event.get("subtype") == "init":
        servers = ", ".join(f"{s['name']} ({s['status']})" for s in event.get("mcp_servers", []))
        print(f"claude {event.get('claude_code_version', '?')} started; MCP servers: {servers}")
    for block in event.get("message", {}).get("content", []) if kind in ("assistant", "user") else []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            print(f"  says: {block['text']}")
        elif block.get("type") == "tool_use":
            arguments = {k: v for k, v in block["input"].items() if k not in ("env", "args")}
            print(f"  calls {block['name'].removeprefix(MCP)}({json.dumps(arguments)})")
        elif block.get("type") == "tool_result":
            content = block.get("content")
            text = content if isinstance(content, str) else json.dumps(content)
            try:
                data = json.loads(text)
            except ValueError:
                print(f"  -> {text[:120]}")
                continue
            records = data.get("done", [data]) if isinstance(data, dict) else []
            for record in records:
                print(f"  -> {record.get('label')}: {record.get('status')} ({record.get('effect_id')})")


def main() -> int:
    claude = find_claude()
    if claude is None:
        print("claude is not installed: run `python -m tests.model_server.clis` (npm) to try this example")
        return 0
    effectd = Path(sys.executable).parent / "effectd"
    if not effectd.exists():
        sys.exit("effectd is not installed in this environment: run `pip install -e .` in the repository")
    with tempfile.TemporaryDirectory() as tmp:
        run = run_mission(Path(tmp), claude, str(effectd), on_event=show)
        print(f"\norchestrator exited {run.exit_code} after {run.seconds:.1f} s; its answer: {run.answer}")
        print(f"the scripted model served {len(run.server.requests)} requests")
        import subprocess

        listed = subprocess.run(
            [str(effectd), "ls", "--db", str(run.journal), "--group", GROUP, "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        print("\nthe journal:")
        for record in sorted(json.loads(listed.stdout), key=lambda r: r["label"]):
            answer = (record.get("result") or {}).get("answer")
            print(
                f"  {record['label']:7} {record['status']:10} reason={record['cancel_reason']} "
                f"tool calls={record['progress']['tool_calls'] if record.get('progress') else 0} answer={answer!r}"
            )
    return 0 if run.exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
