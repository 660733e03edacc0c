"""Records the real CLIs' streams against the scripted server into ``tests/fixtures/real/``.

``python -m tests.model_server.record`` reruns each covered CLI, with the built-in profile's
command line, on a script with one tool call and an answer, and on a scripted API error.
The parser tests read these files; rerun this after moving to a new CLI version.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from effectd.harness.profiles import BUILTIN_PROFILES
from tests.helpers.paths import FIXTURES
from tests.model_server import Conversation, Error, ModelServer, Script, Text, ToolCall
from tests.model_server.clis import (
    PACKAGES,
    bin_dir,
    claude_env,
    codex_env,
    gemini_env,
    install,
    opencode_env,
    pi_env,
)

REAL_FIXTURES = FIXTURES / "real"

ANSWER = "The command printed hi, so the shell works."
ERROR = "scripted: this model is switched off"
TOOLS = {
    "claude": ToolCall("Bash", {"command": "echo hi", "description": "Print hi"}, text="I will run echo first."),
    "codex": ToolCall("exec_command", {"cmd": "echo hi", "yield_time_ms": 60000}, text="I will run echo first."),
    "pi": ToolCall("bash", {"command": "echo hi"}, text="I will run echo first."),
    "opencode": ToolCall("bash", {"command": "echo hi", "description": "Print hi"}, text="I will run echo first."),
    "gemini": ToolCall("run_shell_command", {"command": "echo hi"}, text="I will run echo first."),
}
ARGS: dict[str, list[str]] = {
    "claude": ["--allowedTools", "Bash"],
    "codex": [],
    "pi": [],
    "opencode": [],
    "gemini": ["--approval-mode", "yolo"],
}
ENVS = {"claude": claude_env, "codex": codex_env, "pi": pi_env, "opencode": opencode_env, "gemini": gemini_env}


def record(name: str, workdir: Path) -> None:
    script = Script(
        [
            Conversation("TASK-ECHO", [TOOLS[name], Text(ANSWER)]),
            Conversation("TASK-BROKEN", [Error(400, ERROR)]),
        ]
    )
    with ModelServer(script) as server:
        for case, prompt in (("stream", "TASK-ECHO: check the shell"), ("stream-error", "TASK-BROKEN: anything")):
            home = workdir / f"{name}-{case}"
            env = ENVS[name](server, home)
            argv = BUILTIN_PROFILES[name].build_argv(prompt, ARGS[name])
            argv[0] = str(bin_dir() / name)
            done = subprocess.run(
                argv,
                env={"PATH": "/usr/bin:/bin", "HOME": str(workdir), **env},
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=300,
            )
            target = REAL_FIXTURES / f"{name}-{PACKAGES[name][1]}-{case}.jsonl"
            target.write_text(done.stdout.replace(str(workdir), "/work/project"))
            print(f"{target.name}: exit {done.returncode}, {len(done.stdout.splitlines())} lines")


def main() -> int:
    names = sys.argv[1:]  # e.g. `pi`: only those; all by default
    problems = install()
    REAL_FIXTURES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in PACKAGES:
            if name in problems:
                print(f"{name}: {problems[name]}")
                continue
            if not names or name in names:
                record(name, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
