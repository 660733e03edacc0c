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


def run_interactive_mission(
    workdir: Path, claude: Path, effectd: str, *, extra_env: dict[str, str], timeout_s: float = 300
) -> InteractiveRun:
    workdir.mkdir(parents=True, exist_ok=True)
    journal, wire = workdir / "journal.db", workdir / "wire.jsonl"
    screen = bytearray()
    with ModelServer(Script()) as server:
        server.script = mission_script([server], claude_env(server, workdir / "sub-agents-config"), background=False)
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
        argv += ["--allowedTools", ",".join(MCP + tool for tool in TOOLS), "--", PROMPT]
        pid, fd = pty.fork()
        if pid == 0:  # the child: becomes claude, on the pty
            os.chdir(workdir)
            os.execve(argv[0], argv, env)
        deadline = time.monotonic() + timeout_s
        try:
            # The script's last turn (the final answer) is MISSION's turn 5.
            while time.monotonic() < deadline and 5 not in server.turns_served("MISSION"):
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
