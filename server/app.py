"""The composition root: settings -> engine -> the MCP server and its transports."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer

from effectd.config import Settings
from effectd.engine import Engine
from effectd.mcp_compat import lowlevel

log = logging.getLogger("effectd")

INSTRUCTIONS = """\
effectd runs effects (allow-listed commands and coding-agent harness runs) as supervised
subprocesses, side by side, journaled in SQLite. Dispatch with dispatch_effect (foreground waits
up to wait_s; background returns at once), watch with poll_effect / stream_effect, collect a
group with await_group (mode "any" + cursor takes results as they complete; "first_success"
or "quorum" races them and stops the rest), stop with cancel_effect / cancel_group (kills the
whole process tree), cap what sub-agents spend with set_budget. No call blocks longer than 55 s.
"""


def build_server(engine: Engine) -> MCPServer[Engine]:
    """The MCP server over an engine that is already open (the engine outlives every connection)."""
    # Argument errors reach an agent as text: keep pydantic's message, drop its documentation links.
    os.environ.setdefault("PYDANTIC_ERRORS_INCLUDE_URL", "0")
    from effectd.tools import all_tools, prompts
    from effectd.tools.resources import ResourceFeed
    from effectd.tools.task_legacy import LegacyTasks
    from effectd.tools.tasks import TasksExtension

    feed = ResourceFeed(engine)  # effectd://effects/{id}[/output], with updates to subscribers
    tools = all_tools()
    tasks = TasksExtension(engine, tools)  # effects and flows as MCP tasks

    @asynccontextmanager
    async def lifespan(_: MCPServer[Engine]) -> AsyncIterator[Engine]:
        async with feed.running(), tasks.running():  # their own tasks, never the engine's
            yield engine

    server = MCPServer(
        name="effectd",
        instructions=INSTRUCTIONS,
        version=_version(),
        tools=tools,
        extensions=[tasks],
        middleware=[LegacyTasks(tasks)],  # the 2025-11-25 task form, on legacy connections
        lifespan=lifespan,
        log_level="WARNING",
        subscriptions=feed.bus,
    )
    feed.install(server)
    tasks.install(server)
    prompts.install(server)  # none: not advertised, and prompts/get is -32602
    return server


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("effectd")
    except Exception:
        return "0"


class _Stdin:
    """Lines from fd 0 read without a thread, so a signal can stop the server while it waits for input."""

    def __init__(self, fd: int, on_end: Callable[[], Awaitable[None]] | None = None) -> None:
        self._fd = fd
        self._buffer = b""
        self._on_end = on_end
        os.set_blocking(fd, False)

    def __aiter__(self) -> _Stdin:
        return self

    async def __anext__(self) -> str:
        while b"\n" not in self._buffer:
            try:
                chunk = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                await anyio.wait_readable(self._fd)
                continue
            if not chunk:
                if self._buffer:
                    line, self._buffer = self._buffer, b""
                    return line.decode("utf-8", "replace")
                if self._on_end is not None:
                    # The client is leaving: effects end as `shutdown` while calls in flight can still
                    # answer, rather than as `client_cancelled` when the session tears them down.
                    on_end, self._on_end = self._on_end, None
                    await on_end()
                raise StopAsyncIteration
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8", "replace")


class _Stdout:
    """Writes protocol lines to a private copy of fd 1 without blocking the event loop."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        os.set_blocking(fd, False)

    async def write(self, text: str) -> None:
        data = memoryview(text.encode("utf-8"))
        while data:
            try:
                written = os.write(self._fd, data)
            except BlockingIOError:
                await anyio.wait_writable(self._fd)
                continue
            data = data[written:]

    async def flush(self) -> None:
        return None


async def serve_stdio(server: MCPServer[Engine], on_end: Callable[[], Awaitable[None]] | None = None) -> None:
    """Serves MCP on stdin/stdout until stdin closes (then `on_end` runs before the session ends).
    fd 1 is pointed at stderr meanwhile, so nothing but protocol messages reaches the client."""
    from mcp.server.stdio import stdio_server

    wire_out = os.dup(1)
    os.dup2(2, 1)
    wire_in = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    inner = lowlevel(server)
    try:
        stdin = _Stdin(wire_in, on_end)
        async with stdio_server(stdin, _Stdout(wire_out)) as (read_stream, write_stream):  # type: ignore[arg-type]
            await inner.run(read_stream, write_stream, inner.create_initialization_options())
    finally:
        os.close(wire_in)
        os.close(wire_out)


async def serve(settings: Settings, transport: str = "stdio", **http: Any) -> None:
    """Runs `effectd serve`: the engine, the transport, and a graceful stop on SIGTERM, SIGINT or EOF."""
    if transport == "http":
        from effectd.http import prepare_http

        http = prepare_http(**http)  # refuses a bad bind (ConfigError: exit 2) before the database is opened
    async with Engine.open(settings) as engine:
        server = build_server(engine)
        async with anyio.create_task_group() as tg:

            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                    async for signum in signals:
                        log.warning("%s: stopping effects, then exiting", signal.Signals(signum).name)
                        if transport != "http":  # the HTTP transport stops its effects itself, in order
                            await engine.stop_effects()
                        tg.cancel_scope.cancel()
                        return

            async def run_transport() -> None:
                if transport == "http":
                    from effectd.http import serve_http

                    await serve_http(server, engine, **http)
                else:
                    await serve_stdio(server, on_end=engine.stop_effects)
                tg.cancel_scope.cancel()

            tg.start_soon(stop_on_signal)
            tg.start_soon(run_transport)
