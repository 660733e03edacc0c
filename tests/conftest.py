"""Fixtures: an engine on a fresh database, an in-memory MCP client on it, and a stdio server."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

from effectd.app import build_server
from effectd.config.settings import Settings, build_settings
from effectd.engine.core import Engine

REPO = Path(__file__).resolve().parents[1]
# Every effect started by this test session (in memory or through a stdio server it launched)
# inherits this mark, so the leftover check sees only this session's processes.
SESSION_MARK = f"TEST_EFFECTD_SESSION={os.getpid()}"
os.environ["TEST_EFFECTD_SESSION"] = str(os.getpid())


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


@asynccontextmanager
async def open_engine(settings: Settings) -> AsyncIterator[Engine]:
    async with Engine.open(settings) as engine:
        yield engine


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[Engine]:
    async with open_engine(settings) as engine:
        yield engine


@pytest.fixture
async def client(engine: Engine) -> AsyncIterator[Client]:
    async with Client(build_server(engine), read_timeout_seconds=70) as client:
        yield client


def structured(result: Any) -> Any:
    data = result.structured_content
    if data is None:
        data = json.loads(result.content[0].text)
    return data


def text_of(result: Any) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content or [])


async def call(client: Client, tool: str, **arguments: Any) -> Any:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, f"{tool}({arguments}) failed: {text_of(result)}"
    return structured(result)


async def call_error(client: Client, tool: str, **arguments: Any) -> str:
    result = await client.call_tool(tool, arguments)
    assert result.is_error, f"{tool}({arguments}) was accepted: {structured(result)}"
    return text_of(result)


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
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                marked = SESSION_MARK.encode() + b"\0" in Path(f"/proc/{entry}/environ").read_bytes() + b"\0"
            except OSError:
                continue
            if marked and pid_alive(int(entry)):
                found.add(int(entry))
    return found


@pytest.fixture(autouse=True)
def no_process_left_behind() -> Iterator[None]:
    """A test that leaves an effect's process alive fails."""
    import time

    before = effect_processes()
    yield
    deadline = time.monotonic() + 5
    while (left := effect_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"processes of effects left alive: {sorted(left)}"


@asynccontextmanager
async def connected(settings: Settings, **overrides: Any) -> AsyncIterator[tuple[Engine, Client]]:
    """An engine with `overrides` on the settings and an in-memory client on it."""
    async with Engine.open(replace(settings, **overrides)) as engine:
        async with Client(build_server(engine), read_timeout_seconds=70) as client:
            yield engine, client


def event_count(db: Path, run_id: str | None = None) -> int:
    import sqlite3

    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        if run_id is None:
            return int(conn.execute("select count(*) from events").fetchone()[0])
        return int(conn.execute("select count(*) from events where run_id = ?", (run_id,)).fetchone()[0])


async def read_until(client: Client, effect_id: str, needle: str, within_s: float = 20) -> str:
    """Streams the effect's output until `needle` appears; returns all of it so far."""
    import anyio

    text, cursor = "", 0
    with anyio.fail_after(within_s):
        while needle not in text:
            chunk = await call(client, "stream_effect", effect_id=effect_id, cursor=cursor, wait_s=5)
            text += chunk["data"]
            cursor = chunk["cursor"]
            if chunk["eof"] and needle not in text:
                raise AssertionError(f"{needle!r} never appeared; output was {text!r}")
    return text


async def wait_until(condition: Any, within_s: float = 10) -> None:
    """Polls `condition()` until it holds, failing after `within_s`."""
    import anyio

    with anyio.fail_after(within_s):
        while not condition():  # noqa: ASYNC110 - a plain condition, polled with a bound
            await anyio.sleep(0.01)
