"""The whole mission, offline: the real Claude Code as the *client* of ``effectd serve``.

The scripted model makes the orchestrating ``claude -p`` call effectd's tools: three background
``harness: claude`` sub-agents (the same real CLI, against the same scripted server), then
``await_group`` mode ``any``, then ``cancel_effect`` of the slow one, then its answer.
Used by ``tests/real/test_mission.py`` and ``client_examples/real_claude_offline.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from tests.helpers.processes import SESSION_VARIABLE
from tests.model_server.clis import claude_env
from tests.model_server.script import Conversation, Dynamic, Error, Script, Text, ToolCall
from tests.model_server.server import ModelServer

GROUP = "mission"
FINAL_ANSWER = "Mission done: the first sub-agent answered; the slow one was cancelled."
TOOLS = ("dispatch_effect", "await_group", "cancel_effect")
MCP = "mcp__effectd__"
SLOW_TOOL = "echo waiting; sleep 300"
PROMPT = "MISSION: run three sub-agents through effectd, keep the first answers, cancel the slow one"
ORCHESTRATOR_TIMEOUT_S = 600


def _dispatch(label: str, prompt: str, sub_env: dict[str, str], background: bool) -> ToolCall:
    arguments: dict[str, Any] = {
        "harness": "claude",
        "prompt": prompt,
        "args": ["--allowedTools", "Bash"],
        "env": sub_env,
        "group": GROUP,
        "label": label,
    }
    if background:
        arguments["background"] = True
    return ToolCall(MCP + "dispatch_effect", arguments, text=f"Starting sub-agent {label}.")


def history_texts(body: dict[str, Any]) -> list[str]:
    """The text of every tool result and every other text in an Anthropic request's history, in order.

    Claude Code may move a slow MCP call to the background (`CLAUDE_CODE_MCP_AUTO_BACKGROUND_MS`): the
    tool result then only says so, and the call's result reaches the model later as the text of a
    background-task notification. A model reads both, and so does the script."""
    found = []
    for message in body.get("messages", []):
        content = message.get("content")
        for block in content if isinstance(content, list) else [{"type": "text", "text": content}]:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "tool_result":
                inner = block.get("content")
                parts = inner if isinstance(inner, list) else [{"text": inner}]
                found.append("\n".join(str(p.get("text", "")) for p in parts if isinstance(p, dict)))
            elif block.get("type") == "text" and isinstance(block.get("text"), str):
                found.append(block["text"])
    return found


def mission_script(server_ref: list[ModelServer], sub_env: dict[str, str], *, background: bool = True) -> Script:
    """The orchestrator's conversation (MISSION) and the three sub-agents' (SUB-FAST-1, SUB-FAST-2, SUB-SLOW).

    With ``background=False`` the dispatches are foreground calls, which effectd turns into MCP tasks
    for a client that declares the tasks extension.
    """

    async def cancel_the_slow_one(body: dict[str, Any]) -> Text | ToolCall | Error:
        # As a model would: read the slow sub-agent's effect id from the dispatch result it got back,
        # as a tool result or, for a call Claude Code moved to the background, as its notification.
        texts = [text for text in history_texts(body) if "SUB-SLOW" in text]
        found = next((m for text in texts if (m := re.search(r'"effect_id":\s*"(eff_[0-9a-z]+)"', text))), None)
        if found is None:
            return Text("I could not find the slow sub-agent's effect id.")
        # Give the slow sub-agent the time to reach its tool call, so there is a tree to kill.
        with anyio.move_on_after(120):
            while 0 not in server_ref[0].turns_served("SUB-SLOW"):  # noqa: ASYNC110 - polled with a bound
                await anyio.sleep(0.1)
        await anyio.sleep(2)
        return ToolCall(MCP + "cancel_effect", {"effect_id": found.group(1)}, text="The slow one is not needed.")

    orchestrator = [
        _dispatch("fast-1", "SUB-FAST-1: summarise", sub_env, background),
        _dispatch("fast-2", "SUB-FAST-2: run echo", sub_env, background),
        _dispatch("slow", "SUB-SLOW: wait for a long time", sub_env, background),
        ToolCall(MCP + "await_group", {"group": GROUP, "mode": "any", "timeout_s": 50}, text="Waiting for the first."),
        Dynamic(cancel_the_slow_one),
        Text(FINAL_ANSWER),
    ]
    return Script(
        [
            Conversation("MISSION", orchestrator),
            Conversation("SUB-FAST-1", [Text("fast-1: the summary is short.")]),
            Conversation(
                "SUB-FAST-2",
                [ToolCall("Bash", {"command": "echo hi", "description": "Print hi"}), Text("fast-2: echo said hi.")],
            ),
            Conversation("SUB-SLOW", [ToolCall("Bash", {"command": SLOW_TOOL, "description": "Wait"}), Text("late")]),
        ]
    )


@dataclass
class MissionRun:
    server: ModelServer
    journal: Path
    events: list[dict[str, Any]]
    exit_code: int
    stderr: str
    seconds: float

    @property
    def answer(self) -> str | None:
        results = [e for e in self.events if e.get("type") == "result"]
        return results[-1].get("result") if results else None

    def tool_calls(self) -> list[tuple[str, dict[str, Any]]]:
        """The orchestrator's calls of effectd's tools, in order: (tool name without the MCP prefix, input)."""
        return [
            (block["name"].removeprefix(MCP), block["input"])
            for event in self.events
            if event.get("type") == "assistant"
            for block in event["message"]["content"]
            if block.get("type") == "tool_use"
        ]

    def tool_errors(self) -> list[dict[str, Any]]:
        """The tool results that came back as errors."""
        return [
            block
            for event in self.events
            if event.get("type") == "user"
            for block in event["message"]["content"]
            if isinstance(block, dict) and block.get("is_error")
        ]


def run_mission(
    workdir: Path,
    claude: Path,
    effectd: str,
    *,
    on_event: Callable[[dict[str, Any]], None] = lambda event: None,
    extra_env: dict[str, str] | None = None,
    wire: Path | None = None,
    prompt: str = PROMPT,
    tools: Sequence[str] = TOOLS,
    script: Callable[[list[ModelServer], dict[str, str]], Script] = mission_script,
) -> MissionRun:
    """Runs the orchestrating ``claude -p`` with effectd as its MCP server; returns what happened.

    With ``wire``, effectd runs behind the tee of ``tests/model_server/wire.py``, which records there
    every JSON-RPC message between Claude Code and effectd. Another orchestration is another ``prompt``,
    the effectd ``tools`` it may call, and the ``script`` made from the server and the sub-agents'
    environment (tests/model_server/approving.py).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    journal = workdir / "journal.db"
    server_ref: list[ModelServer] = []
    with ModelServer(Script()) as server:
        server_ref.append(server)
        sub_env = claude_env(server, workdir / "sub-agents-config")
        server.script = script(server_ref, sub_env)
        path = f"{claude.parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
        serve_env = {"PATH": path, **(extra_env or {})}
        if SESSION_VARIABLE in os.environ:  # the test session's leftover check sees the sub-agents
            serve_env[SESSION_VARIABLE] = os.environ[SESSION_VARIABLE]
        command, args = effectd, ["serve", "--db", str(journal)]
        if wire is not None:
            command, args = sys.executable, [str(Path(__file__).with_name("wire.py")), str(wire), "--", effectd, *args]
        config = {"mcpServers": {"effectd": {"command": command, "args": args, "env": serve_env}}}
        (workdir / "mcp.json").write_text(json.dumps(config))
        argv = [
            str(claude),
            "-p",
            prompt,
            "--output-format",
            "stream-json",
            "--verbose",
            "--mcp-config",
            str(workdir / "mcp.json"),
            "--strict-mcp-config",
            "--allowedTools",
            ",".join(MCP + tool for tool in tools),
        ]
        env = {**os.environ, **claude_env(server, workdir / "orchestrator-config"), **(extra_env or {})}
        started = time.monotonic()
        events: list[dict[str, Any]] = []
        stderr_path = workdir / "orchestrator.stderr"
        with (
            stderr_path.open("w") as stderr_file,
            subprocess.Popen(
                argv,
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr_file,
                text=True,
            ) as process,
        ):
            try:
                assert process.stdout is not None
                for line in process.stdout:
                    try:
                        event = json.loads(line)
                    except ValueError:
                        continue
                    events.append(event)
                    on_event(event)
                process.wait(timeout=ORCHESTRATOR_TIMEOUT_S)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        stderr = stderr_path.read_text(errors="replace")
        return MissionRun(server, journal, events, process.returncode, stderr, time.monotonic() - started)
