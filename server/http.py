"""`effectd serve --http`: MCP over streamable HTTP at `/mcp`, the live dashboard at `/`, its JSON API
under `/api/`, all in the server's own event loop over the one open engine.

Every request passes one gate first (`_Gate`): the `Host` and `Origin` headers are checked against
DNS rebinding (a bad `Host` is 421, a bad `Origin` 403), then, when the server has a token, `/mcp`
and `/api/*` need `Authorization: Bearer <token>` (401 otherwise). The dashboard's static files
carry no data and are served without the token; the page asks for it (or takes `#token=...` once)
and sends it as a header on every API call, its live streams included (they are read with
`fetch`, not `EventSource`, so they can carry the header).

MCP is the SDK's `StreamableHTTPSessionManager` over the same low-level server as stdio: stateful
sessions for 2025-protocol clients, one exchange per request for 2026-07-28 ones. The manager enters
the MCP server's lifespan once for its whole run, not per session (mcp 2.3), and that lifespan only
yields the engine that is already open, so every client shares it and an effect outlives the client
that started it.

Live updates are server-sent events. `/api/events` subscribes to the engine's change feed, which
only records which effects changed; the stream sends their rows at most ten times a second,
a comment every 15 s to keep proxies from closing it, and ends when the server stops.

A stop (the caller cancels `serve_http`: SIGTERM, SIGINT) goes in order: uvicorn takes no new
connection, the live streams end, the effects are cancelled (`shutdown`) while clients are still
connected (so a call waiting on one returns its record), the MCP sessions end, requests still
waiting are ended cleanly, and uvicorn closes what is left within STOP_BOUND_S. uvicorn runs in the
server's event loop with its own signal handlers disabled: the signals stay with `effectd.app.serve`.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import nullcontext, suppress
from functools import partial
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import uvicorn
from anyio.abc import TaskStatus
from mcp.server.mcpserver import MCPServer
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from effectd.engine import Engine
from effectd.errors import ConfigError, EffectdError, UnknownEffectError
from effectd.mcp_compat import lowlevel
from effectd.models import STATUSES, CancelledGroup, EffectRecord, now_iso

log = logging.getLogger("effectd")

MESSAGES_PER_S = 10  # live streams send at most this many messages a second (bursts are coalesced)
KEEPALIVE_S = 15.0  # a comment line on an idle stream this often
STOP_BOUND_S = 2.0  # how long a stop waits for open HTTP connections before cutting them
_SETTLE_S = 0.3  # on a stop, requests answering after the effects ended get this long before they are ended
SNAPSHOT_LIMIT = 500  # effects in the first message of /api/events
CANCEL_MESSAGE = "from the dashboard"
_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/app.css": ("app.css", "text/css; charset=utf-8"),
}
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
}
_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# --- binding ---------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1)."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_http_options(host: str, token: str | None) -> None:
    """Refuses a bind that would expose the server without a token (ConfigError: exit 2)."""
    if token is not None and not token.strip():
        raise ConfigError("--token (or EFFECTD_TOKEN) is empty; give a non-empty secret or leave it unset")
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"refusing to serve HTTP on {host} without a token: anyone who can reach it could run and cancel "
            "effects. Give --token SECRET (or set EFFECTD_TOKEN), or bind a loopback address (--host 127.0.0.1)"
        )


def open_listener(host: str = "127.0.0.1", port: int = 8765, token: str | None = None) -> socket.socket:
    """Checks the options and binds the listening socket (port 0: any free port); ConfigError when it cannot."""
    check_http_options(host, token)
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot serve HTTP on {host!r}: {exc.strerror}; give --host an address or name") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(128)
        sock.setblocking(False)
        sock.set_inheritable(False)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port (0 takes any free one)"
        ) from exc
    return sock


def prepare_http(*, host: str = "127.0.0.1", port: int = 8765, token: str | None = None) -> dict[str, Any]:
    """The keyword arguments of `serve_http`, with the socket already bound: called before the database is
    opened, so a bad bind is refused (ConfigError) before anything else happens."""
    return {"host": host, "port": port, "token": token or None, "sock": open_listener(host, port, token or None)}


# --- the gate: DNS rebinding and the token -------------------------------------------------------


def _host_and_port(netloc: str, default_port: int) -> tuple[str, int] | None:
    try:
        parts = urlsplit(f"//{netloc}")
        return (parts.hostname or "", parts.port or default_port)
    except ValueError:
        return None


class _Gate:
    """ASGI middleware in front of everything: Host and Origin checks, then the bearer token."""

    def __init__(self, app: ASGIApp, *, loopback: bool, port: int, token: str | None) -> None:
        self.app = app
        self.loopback = loopback
        self.port = port
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        refusal = self.refusal(scope["path"], host, headers.get("origin"), headers.get("authorization"))
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def refusal(self, path: str, host: str, origin: str | None, authorization: str | None) -> Response | None:
        if not self.host_allowed(host):
            return _error(
                421, f"Host {host!r} is not served here (DNS rebinding protection); use 127.0.0.1 or localhost"
            )
        if origin is not None and not self.origin_allowed(origin, host):
            return _error(403, f"Origin {origin!r} may not call this server")
        if self.token is not None and (path == "/mcp" or path.startswith("/mcp/") or path.startswith("/api/")):
            scheme, _, given = (authorization or "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
                response = _error(401, "missing or wrong bearer token: send Authorization: Bearer <token>")
                response.headers["WWW-Authenticate"] = 'Bearer realm="effectd"'
                return response
        return None

    def host_allowed(self, host: str) -> bool:
        """On a loopback bind the Host must name a loopback address; a wider bind has the token instead."""
        if not self.loopback:
            return True
        parsed = _host_and_port(host, 80)
        return parsed is not None and is_loopback(parsed[0])

    def origin_allowed(self, origin: str, host: str) -> bool:
        """A loopback origin on the bound port, or the same origin as the page (`Origin` = the request's host)."""
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False
        try:
            origin_port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return False
        if is_loopback(parts.hostname or "") and origin_port == self.port:
            return True
        return parts.netloc.lower() == host.lower() and self.host_allowed(host)


# --- records as the dashboard shows them ---------------------------------------------------------


def cost_of(record: EffectRecord) -> float | None:
    result = record.result
    if isinstance(result, dict) and isinstance(result.get("cost_usd"), int | float):
        return float(result["cost_usd"])
    return None


def row_of(record: EffectRecord) -> dict[str, Any]:
    """An effect as a table row: the record without its output tail, result and progress (the detail
    endpoint has them), plus `cost_usd` from the result and the latest assistant text."""
    row = record.model_dump(mode="json", exclude={"output_tail", "result", "progress"})
    row["cost_usd"] = cost_of(record)
    progress = record.progress or {}
    row["last_text"] = progress.get("last_text") if isinstance(progress.get("last_text"), str) else None
    return row


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


N = TypeVar("N", int, float)


class BadRequest(Exception):
    """Raised when a query parameter cannot be used; answered with 400 and the message."""


def _number_param(request: Request, name: str, kind: type[N], default: N, low: N, high: N) -> N:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise BadRequest(f"`{name}` must be {'an integer' if kind is int else 'a number'}, not {raw!r}") from None
    if not low <= value <= high:
        raise BadRequest(f"`{name}` must be between {low:g} and {high:g}, not {value:g}")
    return value


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    return _number_param(request, name, int, default, low, high)


def _float_param(request: Request, name: str, default: float, low: float, high: float) -> float:
    return _number_param(request, name, float, default, low, high)


def _statuses(request: Request) -> list[str] | None:
    values = [part for raw in request.query_params.getlist("status") for part in raw.split(",") if part]
    unknown = sorted(set(values) - set(STATUSES))
    if unknown:
        raise BadRequest(f"unknown status {', '.join(unknown)}; allowed: {', '.join(STATUSES)}")
    return values or None


class _Asgi:
    """Marks a coroutine method as an ASGI app for Starlette's `Route` (which treats functions as handlers)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class _InFlight:
    """Runs every request in a cancel scope of its own, so a stop can end the requests still waiting (long
    polls, listen streams) cleanly: the response is ended (or answered 503) instead of cut mid-way."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._scopes: set[anyio.CancelScope] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = finished = False

        async def tracked(message: Message) -> None:
            nonlocal started, finished
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = True
            await send(message)

        with anyio.CancelScope() as request_scope:
            self._scopes.add(request_scope)
            try:
                await self.app(scope, receive, tracked)
            finally:
                self._scopes.discard(request_scope)
        if request_scope.cancelled_caught and not finished:
            with anyio.CancelScope(shield=True), suppress(Exception):  # the client may be gone already
                if started:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                else:
                    await _error(503, "effectd is stopping")(scope, receive, send)

    def cancel_all(self) -> None:
        for request_scope in list(self._scopes):
            request_scope.cancel()


# --- the application -----------------------------------------------------------------------------


class HttpSurface:
    """The ASGI application: `/mcp` (the SDK's session manager over our MCP server), the dashboard and
    its API. `run_sessions` must be running while it serves."""

    def __init__(self, server: MCPServer[Engine], engine: Engine, *, port: int, loopback: bool, token: str | None):
        self.server = server
        self.engine = engine
        self.stopping = anyio.Event()
        self._sessions_end = anyio.Event()
        self._stream_closers: set[Callable[[], None]] = set()
        # One session manager for the process: sessions share the already open engine (the MCP
        # server's lifespan, entered once by the manager, only yields it). Host and Origin are
        # checked by the gate for every path, so the SDK's own check is off here.
        self.sessions = StreamableHTTPSessionManager(
            app=lowlevel(server),
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        self._mcp_app = StreamableHTTPASGIApp(self.sessions)
        self._static = {path: self._asset(name) for path, (name, _) in _STATIC.items()}
        routes = [
            Route("/mcp", _Asgi(self._mcp)),  # an ASGI app, not a request handler
            *(Route(path, self.static, methods=["GET", "HEAD"]) for path in _STATIC),
            Route("/api/info", self.info),
            Route("/api/runs", self.runs),
            Route("/api/groups", self.groups),
            Route("/api/groups/{group:path}/cancel", self.cancel_group, methods=["POST"]),
            Route("/api/flows", self.flows),
            Route("/api/flows/{flow_id}", self.flow),
            Route("/api/flows/{flow_id}/cancel", self.cancel_flow, methods=["POST"]),
            Route("/api/effects", self.effects),
            Route("/api/effects/{effect_id}", self.effect),
            Route("/api/effects/{effect_id}/output", self.output),
            Route("/api/effects/{effect_id}/output/stream", self.output_stream),
            Route("/api/effects/{effect_id}/cancel", self.cancel_effect, methods=["POST"]),
            Route("/api/events", self.events),
        ]
        handlers: dict[Any, Any] = {
            UnknownEffectError: _not_found,
            BadRequest: _bad_request,
            EffectdError: _bad_request,
        }
        self.requests = _InFlight(Starlette(routes=routes, exception_handlers=handlers))
        self.app = _Gate(self.requests, loopback=loopback, port=port, token=token)

    async def _mcp(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._sessions_end.is_set():  # stopping: the session manager is gone or going
            await _error(503, "effectd is stopping")(scope, receive, send)
            return
        await self._mcp_app(scope, receive, send)

    @staticmethod
    def _asset(name: str) -> bytes:
        return resources.files("effectd.dashboard").joinpath(name).read_bytes()

    async def run_sessions(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Runs the MCP session manager until `end_sessions`; its exit ends every stateful MCP session."""
        async with self.sessions.run():
            task_status.started()
            await self._sessions_end.wait()

    def end_streams(self) -> None:
        """Ends the dashboard's live streams (each sends nothing more and closes)."""
        self.stopping.set()
        for close in list(self._stream_closers):
            close()

    def end_sessions(self) -> None:
        self._sessions_end.set()

    # --- static files -----------------------------------------------------------------------------

    async def static(self, request: Request) -> Response:
        _, media_type = _STATIC[request.url.path]
        return Response(self._static[request.url.path], media_type=media_type, headers=_PAGE_HEADERS)

    # --- queries ----------------------------------------------------------------------------------

    async def info(self, request: Request) -> Response:
        settings = self.engine.settings
        return JSONResponse(
            {
                "server": "effectd",
                "version": self.server.version,
                "db": str(settings.db),
                "default_run_id": self.engine.default_run_id,
                "max_concurrency": settings.max_concurrency,
            }
        )

    async def runs(self, request: Request) -> Response:
        return JSONResponse({"runs": await self.engine.runs(_int_param(request, "limit", 100, 1, 1000))})

    async def groups(self, request: Request) -> Response:
        limit = _int_param(request, "limit", 100, 1, 1000)
        groups = await self.engine.groups(run_id=request.query_params.get("run_id") or None, limit=limit)
        return JSONResponse({"groups": groups})

    async def flows(self, request: Request) -> Response:
        limit = _int_param(request, "limit", 100, 1, 1000)
        flows = await self.engine.flows(run_id=request.query_params.get("run_id") or None, limit=limit)
        return JSONResponse({"flows": flows})

    async def flow(self, request: Request) -> Response:
        record = await self.engine.poll_flow(request.path_params["flow_id"])
        return JSONResponse(record.model_dump(mode="json"))

    async def effects(self, request: Request) -> Response:
        limit = _int_param(request, "limit", 200, 1, 5000)
        group = request.query_params.get("group") or request.query_params.get("flow_id")
        listed = await self.engine.list_effects(
            run_id=request.query_params.get("run_id") or None,
            group=group or None,
            statuses=_statuses(request),
            limit=limit,
        )
        return JSONResponse({"effects": [row_of(r) for r in listed.effects], "version": self.engine.version})

    async def effect(self, request: Request) -> Response:
        record = await self.engine.poll(request.path_params["effect_id"])
        return JSONResponse({**record.model_dump(mode="json"), "cost_usd": cost_of(record)})

    async def output(self, request: Request) -> Response:
        """Like the `stream_effect` tool: output from byte `cursor`, waiting up to `wait_s` for some."""
        cursor = _int_param(request, "cursor", 0, 0, 1 << 62)
        max_bytes = _int_param(request, "max_bytes", 65536, 1, 1 << 20)
        wait_s = _float_param(request, "wait_s", 0.0, 0.0, 55.0)
        effect_id = request.path_params["effect_id"]
        chunk = await self.engine.read_output(effect_id, cursor, max_bytes)
        if wait_s > 0 and not chunk.data and not chunk.eof:
            # Ends early on shutdown; then the chunk read below is what there is.
            await self._first(partial(self.engine.read_output, effect_id, cursor, max_bytes, wait_s))
            chunk = await self.engine.read_output(effect_id, cursor, max_bytes)
        return JSONResponse(chunk.model_dump(mode="json"))

    # --- cancelling -------------------------------------------------------------------------------

    async def cancel_effect(self, request: Request) -> Response:
        """The same engine path as the `cancel_effect` tool; answers once the effect's process group is gone."""
        record = await self.engine.cancel(request.path_params["effect_id"], message=CANCEL_MESSAGE)
        return JSONResponse({**record.model_dump(mode="json"), "cost_usd": cost_of(record)})

    async def cancel_group(self, request: Request) -> Response:
        return self._cancelled(await self.engine.cancel_group(request.path_params["group"], message=CANCEL_MESSAGE))

    async def cancel_flow(self, request: Request) -> Response:
        return self._cancelled(await self.engine.cancel_flow(request.path_params["flow_id"], message=CANCEL_MESSAGE))

    @staticmethod
    def _cancelled(cancelled: CancelledGroup) -> Response:
        return JSONResponse({"cancelled": cancelled.cancelled, "effects": [row_of(r) for r in cancelled.effects]})

    # --- live streams -----------------------------------------------------------------------------

    async def _first(self, wait: Callable[[], Any]) -> None:
        """Awaits `wait()` or the server's stop, whichever comes first."""
        async with anyio.create_task_group() as tg:

            async def waiter() -> None:
                await wait()
                tg.cancel_scope.cancel()

            async def stopper() -> None:
                await self.stopping.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(waiter)
            tg.start_soon(stopper)

    async def events(self, request: Request) -> Response:
        """Server-sent events: `snapshot` (the newest effects) once, then `effects` with the rows that changed."""
        limit = _int_param(request, "limit", SNAPSHOT_LIMIT, 1, 5000)
        engine = self.engine

        async def stream() -> AsyncIterator[bytes]:
            # Everything is set up inside the generator, so a client gone before it starts leaves nothing behind.
            # Subscribed before the snapshot is read, so no change between the two is lost.
            async with engine.changes(per_second=MESSAGES_PER_S) as changes:
                self._stream_closers.add(changes.close)
                try:
                    listed = await engine.list_effects(limit=limit)
                    snapshot = [row_of(r) for r in listed.effects]
                    yield _sse("snapshot", {"version": engine.version, "now": now_iso(), "effects": snapshot})
                    while not self.stopping.is_set():
                        batch = await changes.next_within(KEEPALIVE_S)
                        if self.stopping.is_set() or changes.closed:
                            return
                        if not batch:
                            yield b": keep-alive\n\n"
                            continue
                        rows = []
                        for effect_id in batch:
                            with suppress(UnknownEffectError):
                                rows.append(row_of(await engine.poll(effect_id)))
                        yield _sse("effects", {"version": engine.version, "now": now_iso(), "effects": rows})
                finally:
                    self._stream_closers.discard(changes.close)

        return StreamingResponse(stream(), media_type="text/event-stream", headers=_STREAM_HEADERS)

    async def output_stream(self, request: Request) -> Response:
        """Server-sent events of an effect's output from byte `cursor`: `output` chunks, then `end`."""
        cursor = _int_param(request, "cursor", 0, 0, 1 << 62)
        effect_id = request.path_params["effect_id"]
        await self.engine.poll(effect_id)  # an unknown id is a 404 before the stream starts
        engine = self.engine

        async def stream() -> AsyncIterator[bytes]:
            at = cursor
            while not self.stopping.is_set():
                chunk = await engine.read_output(effect_id, at, 256 * 1024)
                if chunk.data or chunk.cursor != at:
                    at = chunk.cursor
                    yield _sse("output", {"data": chunk.data, "cursor": at})
                    await anyio.sleep(1 / MESSAGES_PER_S)  # coalesce: what arrives meanwhile goes in one message
                    continue
                if chunk.eof:
                    yield _sse("end", {"cursor": at, "status": chunk.status})
                    return
                waited_from = time.monotonic()
                await self._first(partial(engine.read_output, effect_id, at, 1, KEEPALIVE_S))
                if time.monotonic() - waited_from >= KEEPALIVE_S:
                    yield b": keep-alive\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream", headers=_STREAM_HEADERS)


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error(404, str(exc))


async def _bad_request(request: Request, exc: Exception) -> Response:
    return _error(400, str(exc))


# --- serving -------------------------------------------------------------------------------------


class _Uvicorn(uvicorn.Server):
    """uvicorn inside our event loop: the process's signals stay with `effectd.app.serve`, which cancels
    the transport; uvicorn must not replace those handlers with its own."""

    def capture_signals(self) -> Any:
        return nullcontext()


async def serve_http(
    server: MCPServer[Engine],
    engine: Engine,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    sock: socket.socket | None = None,
) -> None:
    """Serves MCP at /mcp and the dashboard at / until cancelled; then stops in order: no new connections,
    the dashboard's streams end, effects are cancelled (`shutdown`) so waiting calls return, MCP sessions
    end, requests still waiting are ended, and uvicorn closes its connections (within STOP_BOUND_S)."""
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
        http="h11",
        ws="none",
        server_header=False,
        timeout_graceful_shutdown=None,  # the stop below bounds it, ending requests cleanly first
    )
    web = _Uvicorn(config)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound_port}"
    log.warning("serving MCP at %s/mcp and the dashboard at %s/%s", url, url, " (token required)" if token else "")
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
