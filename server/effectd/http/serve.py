"""Serving: `HttpSurface` composes the ASGI application (MCP at `/mcp`, the dashboard's pages, its JSON
API and live streams, behind the gate) and `serve_http` runs it with uvicorn in the server's event loop.

MCP is the SDK's `StreamableHTTPSessionManager` over the same low-level server as stdio: stateful
sessions for 2025-protocol clients, one exchange per request for 2026-07-28 ones. The manager enters
the MCP server's lifespan once for its whole run, not per session (mcp 2.3), and that lifespan only
yields the engine that is already open, so every client shares it and an effect outlives the client
that started it.

A stop (the caller cancels `serve_http`: SIGTERM, SIGINT) goes in order: uvicorn takes no new
connection, the live streams end, the effects are cancelled (`Engine.stop_effects`) while clients are
still connected (so a call waiting on one returns its record), the MCP sessions end, requests still
waiting are ended cleanly, and uvicorn closes what is left within STOP_BOUND_S. uvicorn runs with its
own signal handlers disabled: the signals stay with `effectd.app.serve`.
"""

from __future__ import annotations

import logging
import socket
from contextlib import nullcontext
from typing import Any

import anyio
import uvicorn
from anyio.abc import TaskStatus
from mcp.server.mcpserver import MCPServer
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from effectd.config.http import HttpListen
from effectd.engine.core import Engine
from effectd.errors import ConfigError, EffectdError, UnknownEffectError
from effectd.http.guard import ConnectionGuard, accept_batch, guarded_h11
from effectd.http.json_api import JsonApi
from effectd.http.pages import Pages
from effectd.http.security import Gate, is_loopback, open_listener
from effectd.http.stopping import InFlight, Stop
from effectd.http.streams import LiveStreams
from effectd.http.wire import BadRequest, bad_request, error_response, not_found
from effectd.protocol.compat import lowlevel

log = logging.getLogger("effectd")

STOP_BOUND_S = 2.0  # how long a stop waits for open HTTP connections before cutting them
_SETTLE_S = 0.3  # on a stop, requests answering after the effects ended get this long before they are ended


class _Asgi:
    """Marks a coroutine method as an ASGI app for Starlette's `Route` (which treats functions as handlers)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class HttpSurface:
    """The ASGI application (`app`): `/mcp` (the SDK's session manager over our MCP server), the dashboard
    and its API, every request through the gate. `run_sessions` must be running while it serves."""

    def __init__(self, server: MCPServer[Engine], engine: Engine, *, port: int, loopback: bool, token: str | None):
        self.stop = Stop()
        self._sessions_end = anyio.Event()
        # One session manager for the process: sessions share the already open engine (the MCP
        # server's lifespan, entered once by the manager, only yields it). Host and Origin are
        # checked by the gate for every path, so the SDK's own check is off here.
        self.sessions = StreamableHTTPSessionManager(
            app=lowlevel(server),
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        self._mcp_app = StreamableHTTPASGIApp(self.sessions)
        routes = [
            Route("/mcp", _Asgi(self._mcp)),  # an ASGI app, not a request handler
            *Pages().routes(),
            *JsonApi(engine, version=server.version, stop=self.stop).routes(),
            *LiveStreams(engine, stop=self.stop).routes(),
        ]
        handlers: dict[Any, Any] = {
            UnknownEffectError: not_found,
            BadRequest: bad_request,
            EffectdError: bad_request,
        }
        self.requests = InFlight(Starlette(routes=routes, exception_handlers=handlers))
        self.app = Gate(self.requests, loopback=loopback, port=port, token=token)

    async def _mcp(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._sessions_end.is_set():  # stopping: the session manager is gone or going
            await error_response(503, "effectd is stopping")(scope, receive, send)
            return
        await self._mcp_app(scope, receive, send)

    async def run_sessions(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Runs the MCP session manager until `end_sessions`; its exit ends every stateful MCP session."""
        async with self.sessions.run():
            task_status.started()
            await self._sessions_end.wait()

    def end_streams(self) -> None:
        """Ends the dashboard's live streams (each sends nothing more and closes) and its long polls."""
        self.stop.set()

    def end_sessions(self) -> None:
        self._sessions_end.set()


class _Uvicorn(uvicorn.Server):
    """uvicorn inside our event loop: the process's signals stay with `effectd.app.serve`, which cancels
    the transport; uvicorn must not replace those handlers with its own."""

    def capture_signals(self) -> Any:
        return nullcontext()


async def serve_http(
    server: MCPServer[Engine],
    engine: Engine,
    listen: HttpListen,
    *,
    sock: socket.socket | None = None,
) -> None:
    """Serves MCP at /mcp and the dashboard at / until cancelled; then stops in order: no new connections,
    the dashboard's streams end, effects are cancelled (`stop_effects`) so waiting calls return, MCP sessions
    end, requests still waiting are ended, and uvicorn closes its connections (within STOP_BOUND_S).

    `listen` says where (`sock`: bound already) and how: at most `max_connections` connections are open,
    and one that has not sent a request's headers within `header_timeout_s` is closed (`effectd.http.guard`)."""
    host, port, token = listen.host, listen.port, listen.token
    max_connections, header_timeout_s = listen.max_connections, listen.header_timeout_s
    if sock is None:
        sock = open_listener(host, port, token)
    bound_port = int(sock.getsockname()[1])
    surface = HttpSurface(server, engine, port=bound_port, loopback=is_loopback(host), token=token)
    config = uvicorn.Config(
        surface.app,
        lifespan="off",
        log_config=None,
        log_level="warning",
        access_log=False,
        http=guarded_h11(ConnectionGuard(max_connections=max_connections, header_timeout_s=header_timeout_s)),
        backlog=accept_batch(max_connections),
        ws="none",
        server_header=False,
        timeout_graceful_shutdown=None,  # the stop below bounds it, ending requests cleanly first
    )
    web = _Uvicorn(config)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound_port}"
    log.info("serving MCP at %s/mcp and the dashboard at %s/%s", url, url, " (token required)" if token else "")
    stopped = anyio.Event()
    # Both run shielded: the caller's cancellation starts the ordered stop below instead of cutting them.
    web_scope = anyio.CancelScope(shield=True)
    sessions_scope = anyio.CancelScope(shield=True)

    async def run_web() -> None:
        try:
            with web_scope:
                await web.serve(sockets=[sock])
        finally:
            stopped.set()

    async def run_sessions(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with sessions_scope:
            await surface.run_sessions(task_status=task_status)

    async with anyio.create_task_group() as tg:
        await tg.start(run_sessions)
        tg.start_soon(run_web)
        try:
            await stopped.wait()
        finally:
            with anyio.CancelScope(shield=True):
                web.should_exit = True
                surface.end_streams()
                await engine.stop_effects()
                surface.end_sessions()
                with anyio.move_on_after(_SETTLE_S):
                    await stopped.wait()
                surface.requests.cancel_all()
                with anyio.move_on_after(STOP_BOUND_S):
                    await stopped.wait()
                web_scope.cancel()
                sessions_scope.cancel()
        if not web.started:
            raise ConfigError(f"the HTTP server on {url} did not start (see the log above)")
