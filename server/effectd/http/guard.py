"""Strangers cannot starve the HTTP server: a header-read timeout and a bound on open connections.

uvicorn (0.54) has no timeout for a request's headers: its keep-alive timer runs only after a
response, so a connection that sends part of a request line and then nothing is held forever, before
any request reaches the gate and its token check. `ConnectionGuard` adds, at the protocol level
(`guarded_h11`, uvicorn's h11 protocol with three hooks):

- **Header timeout.** A connection waiting for a request's headers (a new one, or a kept-alive one
  after a response) that has not sent them all within `header_timeout_s` is closed. The deadline is
  set when the wait starts and is not pushed back by bytes trickling in (a slow-loris client gains
  nothing). A request whose headers are in is never cut, however long it runs (a live stream).
- **Bound.** At most `max_connections` are open. One more closes the oldest connection still waiting
  for its headers; when every open connection is serving a request, the new one is answered 503 and
  closed. A client that sends its request promptly is therefore served even while strangers hold
  hundreds of half-open connections. asyncio accepts a batch of connections before any reaches the
  guard; `accept_batch` keeps that batch small, so the file descriptors in use stay near the bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("effectd")

HEADER_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 256

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
    b"content-length: 46\r\n\r\neffectd: too many open HTTP connections; retry"
)


def accept_batch(max_connections: int) -> int:
    """uvicorn's `backlog`: also how many connections asyncio accepts in one go before any of them reaches
    the guard, so it bounds how far the open connections can overshoot `max_connections` for a moment."""
    return max(8, min(128, max_connections // 4))


class ConnectionGuard:
    """The open connections of one HTTP server: which wait for request headers (oldest first, each with
    its deadline), the bound, and the closes both make. Runs on the event loop's thread only."""

    def __init__(self, *, max_connections: int = MAX_CONNECTIONS, header_timeout_s: float = HEADER_TIMEOUT_S) -> None:
        if max_connections < 1 or header_timeout_s <= 0:
            raise ValueError("max_connections must be at least 1 and header_timeout_s above 0")
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self._open: set[asyncio.BaseTransport] = set()
        self._waiting: OrderedDict[asyncio.BaseTransport, asyncio.TimerHandle] = OrderedDict()
        self.timed_out = 0  # closed for not sending their headers in time
        self.evicted = 0  # closed to make room for a newer connection
        self.refused = 0  # answered 503: every open connection was serving a request

    @property
    def open(self) -> int:
        return len(self._open)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def opened(self, transport: asyncio.BaseTransport) -> bool:
        """A new connection: True when it may stay (waiting for its headers), False when it was refused."""
        if len(self._open) >= self.max_connections:
            if not self._waiting:
                self.refused += 1
                log.warning(
                    "refused an HTTP connection: all %d allowed connections are serving requests", self.max_connections
                )
                if isinstance(transport, asyncio.WriteTransport):
                    transport.write(_BUSY)
                transport.close()
                return False
            oldest = next(iter(self._waiting))
            self.evicted += 1
            log.warning(
                "%d HTTP connections open (the bound): closed the oldest one still waiting for its request",
                self.max_connections,
            )
            self._close(oldest)
        self._open.add(transport)
        self.wait_for_headers(transport)
        return True

    def wait_for_headers(self, transport: asyncio.BaseTransport) -> None:
        """The connection waits for a request's headers; a deadline already running is kept."""
        if transport in self._waiting or transport not in self._open:
            return
        loop = asyncio.get_running_loop()
        self._waiting[transport] = loop.call_later(self.header_timeout_s, self._expire, transport)

    def serving(self, transport: asyncio.BaseTransport) -> None:
        """The connection's request headers are in: no deadline while it is served."""
        timer = self._waiting.pop(transport, None)
        if timer is not None:
            timer.cancel()

    def closed(self, transport: asyncio.BaseTransport) -> None:
        self.serving(transport)
        self._open.discard(transport)

    def _expire(self, transport: asyncio.BaseTransport) -> None:
        if self._waiting.pop(transport, None) is not None:
            self.timed_out += 1
            log.debug("closed an HTTP connection that sent no request headers within %g s", self.header_timeout_s)
            self._close(transport)

    def _close(self, transport: asyncio.BaseTransport) -> None:
        self.closed(transport)
        transport.close()


def guarded_h11(guard: ConnectionGuard) -> type[H11Protocol]:
    """uvicorn's h11 protocol, reporting to `guard` when a connection opens, starts or ends waiting for a
    request's headers, and closes."""

    class GuardedH11(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if not guard.opened(transport):
                self.connections.discard(self)

        def connection_lost(self, exc: Exception | None) -> None:
            guard.closed(self.transport)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._follow()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._follow()

        def _follow(self) -> None:
            if self.transport.is_closing():
                guard.closed(self.transport)
            elif self.conn.their_state is h11.IDLE:  # no complete request yet: (still) waiting for headers
                guard.wait_for_headers(self.transport)
            else:
                guard.serving(self.transport)

    return GuardedH11
