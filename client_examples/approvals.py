"""Sub-agents that ask before they act, answered by an orchestrator sitting in `await_group`.

    python client_examples/approvals.py

The sub-agents are `effectd.demo.asker`, a stand-in for Claude Code's permission path (it calls the
permission gate effectd gives it before it writes a file), so this runs with no agent CLI and no
network. With the real Claude Code, dispatch `harness="claude"` with the same arguments.

It shows:
- `approvals: "ask"` with `approval_rules`: writes under `notes/` are allowed by a rule, at once;
- the orchestrator's loop: `await_group` wakes with each request in `approvals` (its cursor makes each
  wake it once), and `answer_approval` allows a write inside the project and denies the others;
- a flow step with `approval: true`, which waits for its start until it is allowed;
- `list_approvals` at the end: who decided what.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

ASKER = [sys.executable, "-m", "effectd.demo.asker", "-p", "{prompt}"]


def effectd_executable() -> str:
    beside = Path(sys.executable).parent / "effectd"
    found = str(beside) if beside.exists() else shutil.which("effectd")
    if found is None:
        sys.exit("effectd is not installed in this environment: run `pip install -e .` in the repository")
    return found


def within(path: str, project: Path) -> bool:
    """Whether `path` is inside `project` (normalised first, so `..` cannot escape it)."""
    return Path(os.path.normpath(path)).is_relative_to(project)


async def call(client: Client, tool: str, **arguments: Any) -> Any:
    result = await client.call_tool(tool, arguments)
    if result.is_error:
        raise RuntimeError(f"{tool}: {result.content[0].text}")  # type: ignore[union-attr]
    return result.structured_content


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="effectd-approvals-") as tmp:
        project = Path(tmp) / "project"
        (project / "notes").mkdir(parents=True)
        config = Path(tmp) / "effectd.toml"
        config.write_text(f'[harness.asker]\ncommand = {json.dumps(ASKER)}\nparser = "lines"\napprovals = "claude"\n')
        args = ["serve", "--db", str(Path(tmp) / "journal.db"), "--config", str(config), "--allow-command", "touch"]
        server = StdioServerParameters(command=effectd_executable(), args=args)
        async with Client(server, read_timeout_seconds=70) as client:
            rules = [{"tool": "Write", "input_matches": r"/notes/", "decision": "allow"}]
            writes = {
                "note": project / "notes" / "todo.md",  # a rule allows it
                "code": project / "main.py",  # the orchestrator allows it
                "escape": Path(tmp) / "outside.txt",  # the orchestrator denies it
            }
            for label, target in writes.items():
                await call(
                    client, "dispatch_effect", harness="asker", prompt=f"write {target} {label}", label=label,
                    approvals="ask", approval_rules=rules, group="agents", background=True,
                )  # fmt: skip
            cursor = 0
            while True:
                woke = await call(client, "await_group", group="agents", cursor=cursor, timeout_s=50)
                cursor = woke["cursor"]
                for approval in woke["approvals"] or []:
                    path = approval["input"].get("file_path", "")
                    inside = within(path, project)
                    print(f"asked: {approval['tool']} {path} -> {'allow' if inside else 'deny'}")
                    await call(
                        client, "answer_approval", approval_id=approval["approval_id"],
                        decision="allow" if inside else "deny", message=None if inside else "only inside the project",
                    )  # fmt: skip
                if woke["complete"]:
                    break
            for label, target in writes.items():
                print(f"{label:<7} {'written' if target.exists() else 'not written'}")

            steps = [{"id": "release", "approval": True, "command": ["touch", str(project / "released")]}]
            flow = await call(client, "dispatch_flow", steps=steps, background=True)
            woke = await call(client, "await_group", group=flow["flow_id"], timeout_s=50)
            (start,) = woke["approvals"]
            print(f"flow step {start['input']['step_id']} waits for its start; allowing it")
            await call(client, "answer_approval", approval_id=start["approval_id"], decision="allow")
            done = await call(client, "poll_flow", flow_id=flow["flow_id"], wait_s=30)
            print(f"flow {done['status']}, released: {(project / 'released').exists()}")

            print("approvals:")
            for approval in (await call(client, "list_approvals"))["approvals"]:
                print(f"  {approval['tool']:<6} {approval['status']:<8} by {approval['decided_by']}")


if __name__ == "__main__":
    anyio.run(main)
