"""Child programs for effects, the ``effectd`` program, and which processes are still alive.

Every effect a test session starts (in memory, or through a server it launched) inherits
``TEST_EFFECTD_SESSION=<pid of the session's process>`` (set by tests/conftest.py), so the leftover
check sees only this session's processes: under pytest-xdist each worker is its own session.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

import anyio
from mcp import StdioServerParameters

SESSION_VARIABLE = "TEST_EFFECTD_SESSION"


def py(code: str, *args: str) -> list[str]:
    """An argv that runs Python code unbuffered."""
    return [sys.executable, "-u", "-c", code, *args]


SLEEP = "import time, sys; time.sleep(float(sys.argv[1]))"


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


async def wait_gone(pids: Sequence[int], within_s: float = 10.0) -> None:
    """Returns once none of `pids` is alive; fails after `within_s`."""
    with anyio.fail_after(within_s):
        while any(pid_alive(p) for p in pids):  # noqa: ASYNC110 - no event tells when another process dies
            await anyio.sleep(0.02)


def keeper_of(server: int) -> int:
    """The keeper the server started: its child running effectd.runner.keeper."""
    for task in os.listdir(f"/proc/{server}/task"):
        for child in Path(f"/proc/{server}/task/{task}/children").read_text().split():
            with suppress(OSError):
                if b"effectd.runner.keeper" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return int(child)
    raise AssertionError(f"server {server} has no keeper")


def effectd_bin() -> str:
    beside = Path(sys.executable).parent / "effectd"
    return str(beside) if beside.exists() else "effectd"


def stdio_params(db: Path, *flags: str, env: dict[str, str] | None = None) -> StdioServerParameters:
    return StdioServerParameters(
        command=effectd_bin(),
        args=["serve", "--db", str(db), *flags],
        cwd=str(db.parent),
        env={**os.environ, **(env or {})},
    )


def effect_processes() -> set[int]:
    """Live processes started as effects by this test session."""
    mark = f"{SESSION_VARIABLE}={os.environ[SESSION_VARIABLE]}".encode()
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                marked = mark in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marked and pid_alive(int(entry)):
                found.add(int(entry))
    return found


def event_count(db: Path, run_id: str | None = None) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        if run_id is None:
            return int(conn.execute("select count(*) from events").fetchone()[0])
        return int(conn.execute("select count(*) from events where run_id = ?", (run_id,)).fetchone()[0])


CHILD_WITH_GRANDCHILD = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
grandchild = subprocess.Popen([sys.executable, "-c", stubborn])
print(f"pids {os.getpid()} {grandchild.pid}", flush=True)
time.sleep(120)
"""
