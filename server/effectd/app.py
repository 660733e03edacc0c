"""The composition root: settings -> engine -> the MCP server and its transports."""

from __future__ import annotations

import logging
import os
import select
import signal
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
from mcp.server.mcpserver import MCPServer

from effectd.config.http import HttpListen
from effectd.config.settings import Settings
from effectd.engine.core import Engine
from effectd.protocol.compat import lowlevel
from effectd.protocol.startup import Front, Tracker

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
    from effectd.protocol import prompts
    from effectd.protocol.resources import ResourceFeed
    from effectd.protocol.tasks.extension import TasksExtension
    from effectd.protocol.tasks.legacy import LegacyTasks
    from effectd.tools.surface import all_tools

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
    if not any(name.startswith("OTEL_") for name in os.environ):
        # With no OpenTelemetry configured, the SDK's default tracing middleware makes no-op spans on
        # every message (no difference per request measured here: work for nothing). It stays when any
        # OTEL_* variable is set.
        server.middleware[:] = [m for m in server.middleware if type(m).__name__ != "OpenTelemetryMiddleware"]
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


class _Ending:
    """What runs once when the client leaves (its stdin ends or its stdout closes); later callers wait for it."""

    def __init__(self, on_end: Callable[[], Awaitable[None]] | None) -> None:
        self._on_end = on_end
        self._done: anyio.Event | None = None

    async def __call__(self) -> None:
        if self._done is not None:
            await self._done.wait()
            return
        self._done = anyio.Event()
        try:
            if self._on_end is not None:
                await self._on_end()
        finally:
            self._done.set()


class _Stdin:
    """Lines from fd 0 read without a thread, so a signal can stop the server while it waits for input.

    A line arriving in many reads costs time linear in its length: the buffer grows in place and only
    the bytes not yet searched are searched for the newline."""

    def __init__(
        self,
        fd: int,
        on_end: Callable[[], Awaitable[None]] | None = None,
        *,
        read_before: bytes = b"",
        tracker: Tracker | None = None,
    ) -> None:
        self._fd = fd
        self._buffer = bytearray(read_before)  # what the start-up cache's front read first, read again
        self._searched = 0  # the first bytes of the buffer, known to hold no newline
        self._on_end = on_end
        self._tracker = tracker if tracker is not None and tracker.watching else None
        os.set_blocking(fd, False)

    def __aiter__(self) -> _Stdin:
        return self

    async def __anext__(self) -> str:
        while (end := self._buffer.find(b"\n", self._searched)) < 0:
            self._searched = len(self._buffer)
            try:
                chunk = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                await anyio.wait_readable(self._fd)
                continue
            if not chunk:
                if self._buffer:
                    return self._take(len(self._buffer))
                if self._on_end is not None:
                    # The client is leaving: effects end as `shutdown` while calls in flight can still
                    # answer, rather than as `client_cancelled` when the session tears them down.
                    on_end, self._on_end = self._on_end, None
                    await on_end()
                raise StopAsyncIteration
            self._buffer += chunk
        return self._take(end, 1)

    def _take(self, end: int, separator: int = 0) -> str:
        """The first `end` bytes as text, removed from the buffer with the `separator` after them."""
        with memoryview(self._buffer) as view:
            line = str(view[:end], "utf-8", "replace")  # decoded in place, not copied first
        del self._buffer[: end + separator]  # a bytearray drops its front without moving the rest
        self._searched = 0
        if self._tracker is not None:  # the first lines only: the start-up cache is filled from their answers
            self._tracker.request(line, serve=False)
            if not self._tracker.watching:
                self._tracker = None
        return line


class _Stdout:
    """Writes protocol lines to a private copy of fd 1 without blocking the event loop.

    When the client closes its end, `on_closed` is called once; what is written after that is dropped.
    A write finds out (EPIPE), and so does `watch` meanwhile, while nothing is written."""

    def __init__(
        self, fd: int, on_closed: Callable[[], object] | None = None, *, tracker: Tracker | None = None
    ) -> None:
        self._fd = fd
        self._on_closed = on_closed
        self.closed = False
        self._tracker = tracker  # the start-up cache's, while answers to its requests are still due
        os.set_blocking(fd, False)

    async def write(self, text: str) -> None:
        if self._tracker is not None:
            send = self._tracker.answer(text)
            if self._tracker.done:
                self._tracker = None
            if not send:  # the front answered it from the cache
                return
        data = memoryview(text.encode("utf-8"))
        while data and not self.closed:
            try:
                written = os.write(self._fd, data)
            except BlockingIOError:
                await anyio.wait_writable(self._fd)
                continue
            except OSError as exc:  # EPIPE: nobody reads the answers any more
                self._close(exc.strerror or str(exc))
                return
            data = data[written:]

    def _close(self, why: str) -> None:
        if not self.closed:
            log.warning("the client closed its end of stdout (%s): stopping effects, then exiting", why)
            self.closed = True
            if self._on_closed is not None:
                self._on_closed()

    async def watch(self) -> None:
        """Returns once the client closed its end of the stdout pipe (at once if it was never a pipe).
        The write end of a pipe is never readable: epoll wakes a reader of it only with the error it
        reports when the last reader is gone."""
        if not stat.S_ISFIFO(os.fstat(self._fd).st_mode):
            return
        await anyio.wait_readable(self._fd)
        poller = select.poll()
        poller.register(self._fd, 0)  # POLLERR is always reported
        if any(events & select.POLLERR for _, events in poller.poll(0)):
            self._close("no reader left")

    async def flush(self) -> None:
        return None


async def serve_stdio(
    server: MCPServer[Engine], on_end: Callable[[], Awaitable[None]] | None = None, front: Front | None = None
) -> None:
    """Serves MCP on stdin/stdout until stdin ends or the client closes stdout (either way `on_end` runs,
    once, before the session ends). fd 1 is pointed at stderr meanwhile, so nothing but protocol
    messages reaches the client. With the start-up cache's `front`, what it read is read first, and the
    answers it gave from the cache are not given again."""
    from mcp.server.stdio import stdio_server

    read_before, tracker = (front.handoff(), front.tracker) if front is not None else (b"", None)
    wire_out = os.dup(1)
    os.dup2(2, 1)
    wire_in = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    inner = lowlevel(server)
    ending = _Ending(on_end)
    try:
        async with anyio.create_task_group() as tg:

            async def leave() -> None:
                await ending()  # as when stdin ends: effects stop as `shutdown`
                tg.cancel_scope.cancel()  # nobody reads what the session would still say

            stdin = _Stdin(wire_in, ending, read_before=read_before, tracker=tracker)
            stdout = _Stdout(wire_out, lambda: tg.start_soon(leave), tracker=tracker)
            tg.start_soon(stdout.watch)
            async with stdio_server(stdin, stdout) as (read_stream, write_stream):  # type: ignore[arg-type]
                await inner.run(read_stream, write_stream, inner.create_initialization_options())
            tg.cancel_scope.cancel()
    finally:
        os.close(wire_in)
        os.close(wire_out)


async def serve(settings: Settings, http: HttpListen | None = None, front: Front | None = None) -> None:
    """Runs `effectd serve`: the engine, the transport (stdio, or HTTP as `http` says), and a graceful
    stop on SIGTERM, SIGINT or EOF. `front`: the start-up cache's, answering on stdio until the server
    is ready."""
    sock = None
    if http is not None:
        from effectd.http.security import open_listener

        sock = open_listener(http.host, http.port, http.token)  # a bad bind: ConfigError (exit 2), nothing opened
    async with Engine.open(settings) as engine:
        server = build_server(engine)
        async with anyio.create_task_group() as tg:

            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                    async for signum in signals:
                        log.warning("%s: stopping effects, then exiting", signal.Signals(signum).name)
                        if http is None:  # the HTTP transport stops its effects itself, in order
                            await engine.stop_effects()
                        tg.cancel_scope.cancel()
                        return

            async def run_transport() -> None:
                if http is not None:
                    from effectd.http.serve import serve_http

                    await serve_http(server, engine, http, sock=sock)
                else:
                    await serve_stdio(server, on_end=engine.stop_effects, front=front)
                tg.cancel_scope.cancel()

            tg.start_soon(stop_on_signal)
            tg.start_soon(run_transport)
