"""An orchestrator that answers its sub-agent's approval (issue 25), offline: the real Claude Code as the
client of ``effectd serve`` (``run_mission`` of tests/model_server/mission.py with this script).

The scripted model makes the orchestrating ``claude -p`` dispatch one ``harness: claude`` sub-agent with
``approvals: "ask"`` in the background and sit in ``await_group``, which returns early with the
sub-agent's Write request in ``approvals``; it then calls ``answer_approval`` allow, as a model would
with the id it read there, and awaits the group to its end. The sub-agent (the real CLI again) asks
through the gate effectd gave it, and writes once allowed. Used by tests/real/test_approvals_claude.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.model_server.mission import MCP, history_texts
from tests.model_server.script import Conversation, Dynamic, Error, Script, Text, ToolCall
from tests.model_server.server import ModelServer

PROMPT = "APR-ORCH: have a sub-agent write the file, and allow its write when it asks"
SUB_PROMPT = "APR-SUB: write the file"
TOOLS = ("dispatch_effect", "await_group", "answer_approval")
GROUP = "approving"
WROTE = "The file is written."
FINAL_ANSWER = "The sub-agent asked to write the file; I allowed it, and it wrote it."


def writer(match: str, target: Path, content: str) -> Conversation:
    """A sub-agent's model that calls Claude Code's Write once, then answers."""
    return Conversation(match, [ToolCall("Write", {"file_path": str(target), "content": content}), Text(WROTE)])


def _last(pattern: str, body: dict[str, Any]) -> str | None:
    """The first group of the last match of ``pattern`` in the request's tool results and texts."""
    found = [match.group(1) for text in history_texts(body) for match in re.finditer(pattern, text)]
    return found[-1] if found else None


def approving_script(target: Path, content: str) -> Callable[[list[ModelServer], dict[str, str]], Script]:
    """The orchestrator's conversation (APR-ORCH) and its sub-agent's (APR-SUB, which writes ``target``)."""

    def make(server_ref: list[ModelServer], sub_env: dict[str, str]) -> Script:
        async def allow(body: dict[str, Any]) -> Text | ToolCall | Error:
            approval_id = _last(r'"approval_id":\s*"(apr_[0-9a-z]+)"', body)
            if approval_id is None:
                return Text("await_group returned no approval to answer.")
            return ToolCall(
                MCP + "answer_approval",
                {"approval_id": approval_id, "decision": "allow"},
                text="It asks to write a file in its own folder: allowed.",
            )

        async def await_the_end(body: dict[str, Any]) -> Text | ToolCall | Error:
            cursor = _last(r'"cursor":\s*(\d+)', body)
            arguments = {"group": GROUP, "mode": "all", "cursor": int(cursor or 0), "timeout_s": 50}
            return ToolCall(MCP + "await_group", arguments, text="Waiting for it to finish.")

        dispatch = {
            "harness": "claude",
            "prompt": SUB_PROMPT,
            "approvals": "ask",
            "env": sub_env,
            "cwd": str(target.parent),
            "group": GROUP,
            "label": "writer",
            "background": True,
        }
        orchestrator = [
            ToolCall(MCP + "dispatch_effect", dispatch, text="Starting the sub-agent."),
            ToolCall(MCP + "await_group", {"group": GROUP, "timeout_s": 50}, text="Waiting for it."),
            Dynamic(allow),
            Dynamic(await_the_end),
            Text(FINAL_ANSWER),
        ]
        return Script([Conversation("APR-ORCH", orchestrator), writer("APR-SUB", target, content)])

    return make
