"""Fixtures for every tier: settings on a fresh database, an engine, an in-memory MCP client on it, a real
`effectd serve --http` daemon, and the leftover check that fails a test leaving an effect's process alive.

What tests call directly (call, py, pid_alive, ...) is in tests/helpers/, not here.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from effectd.app import build_server
from effectd.config.settings import Settings, build_settings
from effectd.engine.core import Engine
from tests.helpers.http import Daemon, stop, wait_for_url
from tests.helpers.processes import SESSION_VARIABLE, effect_processes, effectd_bin

# Every effect started by this test session (in memory or through a server it launched) inherits this
# mark, so the leftover check sees only this session's processes (under xdist: this worker's).
os.environ[SESSION_VARIABLE] = str(os.getpid())
# The servers this session spawns keep their start-up cache (effectd.protocol.startup) in the session's
# own directory, never in the user's ~/.cache.
_CACHE = tempfile.TemporaryDirectory(prefix="effectd-test-cache-")
os.environ["XDG_CACHE_HOME"] = _CACHE.name


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for a test: its own database, any command allowed, short grace periods."""
    return replace(
        build_settings({}, db=tmp_path / "journal.db", allow_any_command=True),
        default_grace_s=0.5,
        result_grace_s=0.5,
        poll_control_s=0.05,
    )


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[Engine]:
    async with Engine.open(settings) as engine:
        yield engine


@pytest.fixture
async def client(engine: Engine) -> AsyncIterator[Client]:
    async with Client(build_server(engine), read_timeout_seconds=70) as client:
        yield client


@pytest.fixture(autouse=True)
def no_process_left_behind() -> Iterator[None]:
    """A test that leaves an effect's process alive fails."""
    before = effect_processes()
    yield
    deadline = time.monotonic() + 5
    while (left := effect_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"processes of effects left alive: {sorted(left)}"


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Any]:
    """Starts real `effectd serve --http` daemons on free ports (`daemon_factory(*flags)`); stops them after."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*flags: str, env: dict[str, str] | None = None, name: str = "journal") -> Daemon:
        db = tmp_path / f"{name}.db"
        log = tmp_path / f"{name}.stderr"
        with open(log, "wb") as err:
            proc = subprocess.Popen(
                [effectd_bin(), "serve", "--http", "--port", "0", "--db", str(db), "--allow-any-command", *flags],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=tmp_path,
                env={**os.environ, **(env or {})},
            )
        started.append(proc)
        return Daemon(proc, wait_for_url(proc, log), db, log)

    yield start
    for proc in started:
        stop(proc)
