"""How a stop reaches the requests: `Stop` (the flag the live streams and long polls watch, and the
subscriptions it closes) and `InFlight` (every request in a cancel scope of its own, so the ones still
waiting can be ended cleanly)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from effectd.http.wire import error_response


class Stop:
    """The HTTP surface's stop as the requests see it: a flag, waits that end at it, and live
    subscriptions it closes."""

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._closers: set[Callable[[], None]] = set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        """Stops: the live streams send nothing more, and the subscriptions they wait on are closed."""
        self._event.set()
        for close in list(self._closers):
            close()

    @contextmanager
    def closes(self, close: Callable[[], None]) -> Iterator[None]:
        """While inside, a stop also calls `close` (a live stream's subscription, so its wait ends)."""
        self._closers.add(close)
        try:
            yield
        finally:
            self._closers.discard(close)

    async def first(self, wait: Callable[[], Awaitable[Any]]) -> None:
        """Awaits `wait()` or the stop, whichever comes first."""
        async with anyio.create_task_group() as tg:

            async def waiter() -> None:
                await wait()
                tg.cancel_scope.cancel()

            async def stopper() -> None:
                await self._event.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(waiter)
            tg.start_soon(stopper)


class InFlight:
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
                    await error_response(503, "effectd is stopping")(scope, receive, send)

    def cancel_all(self) -> None:
        for request_scope in list(self._scopes):
            request_scope.cancel()
