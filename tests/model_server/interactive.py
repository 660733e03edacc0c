"""The mission run by an *interactive* Claude Code (in a pseudo-terminal), effectd behind the wire tee.

Claude Code 2.1.332 turns on its MCP tasks path only in an interactive session: ``claude -p`` (a
single-shot print session) strips the tasks extension from every request. So this driver starts
``claude`` with the mission as its first prompt in a pty, lets the scripted model run the mission with
foreground dispatches, and ends the session once the final answer was served.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers.processes import SESSION_VARIABLE
from tests.model_server.clis import claude_env
from tests.model_server.mission import MCP, PROMPT, TOOLS, mission_script
from tests.model_server.script import Script
from tests.model_server.server import ModelServer
from tests.model_server.wire import read_wire


@dataclass
class InteractiveRun:
    server: ModelServer
    journal: Path
    wire: list[dict[str, Any]]
    screen: str

    def tool_calls(self) -> list[tuple[str, dict[str, Any]]]:
        """The orchestrator's ``tools/call`` requests to effectd, in order, as effectd got them: (name, arguments)."""
        return [(m["params"]["name"], m["params"].get("arguments", {})) for m in self._calls()]

    def tool_errors(self) -> list[dict[str, Any]]:
        """effectd's answers to those calls that are errors (a JSON-RPC error or a tool result with ``isError``)."""
        ids = {m["id"] for m in self._calls()}
        answers = [e["msg"] for e in self.wire if e["dir"] == "s2c" and e["msg"].get("id") in ids]
        return [m for m in answers if "error" in m or m.get("result", {}).get("isError")]

    def _calls(self) -> list[dict[str, Any]]:
        return [e["msg"] for e in self.wire if e["dir"] == "c2s" and e["msg"].get("method") == "tools/call"]


def _settings(workdir: Path, config_dir: Path) -> None:
    """Onboarding done, the scripted key approved, the folder trusted: no dialog stops the session."""
    config_dir.mkdir(parents=True, exist_ok=True)
    state = {
        "hasCompletedOnboarding": True,
        "theme": "dark",
        "customApiKeyResponses": {"approved": ["scripted-key"], "rejected": []},
        "projects": {str(workdir): {"hasTrustDialogAccepted": True, "hasCompletedProjectOnboarding": True}},
    }
    (config_dir / ".claude.json").write_text(json.dumps(state))


def _foreground_mission(server_ref: list[ModelServer], sub_env: dict[str, str]) -> Script:
    return mission_script(server_ref, sub_env, background=False)


def run_interactive_mission(
    workdir: Path,
    claude: Path,
    effectd: str,
    *,
    extra_env: dict[str, str],
    timeout_s: float = 300,
    prompt: str = PROMPT,
    tools: Sequence[str] = TOOLS,
    script: Callable[[list[ModelServer], dict[str, str]], Script] = _foreground_mission,
    last_turn: tuple[str, int] = ("MISSION", 5),
) -> InteractiveRun:
    """Runs the orchestrating interactive ``claude`` until the scripted model served ``last_turn`` (a
    conversation's match and its turn index: the final answer). The default is the mission with foreground
    dispatches; another orchestration is another ``prompt``, ``tools``, ``script`` and ``last_turn``, as for
    ``run_mission`` (tests/model_server/approving.py)."""
    workdir.mkdir(parents=True, exist_ok=True)
    journal, wire = workdir / "journal.db", workdir / "wire.jsonl"
    screen = bytearray()
    with ModelServer(Script()) as server:
        server.script = script([server], claude_env(server, workdir / "sub-agents-config"))
        config_dir = workdir / "orchestrator-config"
        env = {**os.environ, **claude_env(server, config_dir), **extra_env, "TERM": "xterm-256color"}
        _settings(workdir, config_dir)
        serve_env = {"PATH": f"{claude.parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"}
        if SESSION_VARIABLE in os.environ:  # the test session's leftover check sees the sub-agents
            serve_env[SESSION_VARIABLE] = os.environ[SESSION_VARIABLE]
        tee = [str(Path(__file__).with_name("wire.py")), str(wire), "--", effectd, "serve", "--db", str(journal)]
        config = {"mcpServers": {"effectd": {"command": sys.executable, "args": tee, "env": serve_env}}}
        (workdir / "mcp.json").write_text(json.dumps(config))
        argv = [str(claude), "--mcp-config", str(workdir / "mcp.json"), "--strict-mcp-config"]
        argv += ["--allowedTools", ",".join(MCP + tool for tool in tools), "--", prompt]
        pid, fd = pty.fork()
        if pid == 0:  # the child: becomes claude, on the pty
            os.chdir(workdir)
            os.execve(argv[0], argv, env)
        deadline = time.monotonic() + timeout_s
        try:
            match, turn = last_turn
            while time.monotonic() < deadline and turn not in server.turns_served(match):
                if select.select([fd], [], [], 0.5)[0]:
                    try:
                        screen += os.read(fd, 65536)
                    except OSError:
                        break
            time.sleep(1)  # let the answer reach the screen
        finally:
            os.kill(pid, signal.SIGTERM)
            ended, reaped = time.monotonic() + 10, False
            while time.monotonic() < ended and not reaped:
                reaped = os.waitpid(pid, os.WNOHANG)[0] == pid
                if not reaped and select.select([fd], [], [], 0.2)[0]:
                    try:
                        screen += os.read(fd, 65536)
                    except OSError:
                        time.sleep(0.2)
            if not reaped:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            os.close(fd)
        return InteractiveRun(server, journal, read_wire(wire), screen.decode(errors="replace"))
