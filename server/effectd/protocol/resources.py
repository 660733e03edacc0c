"""MCP resources: `effectd://effects/{effect_id}` (the record, JSON) and `effectd://effects/{effect_id}/output`
(the captured output, text), with resource-updated notifications while an effect changes.

The SDK (mcp 2.3) delivers change notifications in two ways, by protocol era, and both are served:

- 2026-07-28 clients open `subscriptions/listen` with the URIs they want (`Client.listen(...)`); the SDK's
  listen handler filters the events of the server's `SubscriptionBus` for them. `ctx.notify_resource_updated`
  only publishes from inside a request, so supervisor changes are bridged to the bus here instead: the
  server is built with our bus, and a pump publishes `ResourceUpdated` for each effect that changed.
- Earlier clients send `resources/subscribe` / `resources/unsubscribe` (MCPServer registers no handler
  for them); those are registered here, and the same pump sends `notifications/resources/updated` on the
  subscribing connection.

Changes come from the engine's change feed, coalesced: the pump publishes at most ten times a second,
one event per changed URI. The record URI changes with any change of the effect (status, output size,
progress); the output URI when output arrived or the effect ended. The pump runs in the feed's own task
group (entered with the MCP server's lifespan), and subscribes to the engine's changes only while
someone listens.
"""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourceUpdated, ServerEvent
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, EmptyResult, SubscribeRequestParams, UnsubscribeRequestParams

from effectd.engine.core import Engine
from effectd.errors import UnknownEffectError
from effectd.protocol.compat import connection_of, lowlevel
from effectd.tools._base import engine_of

log = logging.getLogger("effectd")

RECORD_URI = "effectd://effects/{effect_id}"
OUTPUT_URI = "effectd://effects/{effect_id}/output"
OUTPUT_LIMIT_BYTES = 256 * 1024  # the output resource holds at most the last 256 KiB; stream_effect has all
UPDATES_PER_S = 10
_URI = re.compile(r"^effectd://effects/(?P<effect_id>[^/]+)(?P<output>/output)?$")


def record_uri(effect_id: str) -> str:
    return f"effectd://effects/{effect_id}"


def output_uri(effect_id: str) -> str:
    return f"effectd://effects/{effect_id}/output"


async def effect_record(effect_id: str, ctx: Context[Any, Any]) -> str:
    """An effect's record (the object poll_effect returns), as JSON."""
    try:
        record = await engine_of(ctx).poll(effect_id)
    except UnknownEffectError as exc:
        raise ResourceNotFoundError(str(exc)) from exc
    return record.model_dump_json(indent=2)


async def effect_output(effect_id: str, ctx: Context[Any, Any]) -> str:
    """An effect's combined stdout and stderr so far (the last 256 KiB at most; stream_effect reads all)."""
    try:
        text, size = await engine_of(ctx).output_tail(effect_id, OUTPUT_LIMIT_BYTES)
    except UnknownEffectError as exc:
        raise ResourceNotFoundError(str(exc)) from exc
    if size > OUTPUT_LIMIT_BYTES:
        return f"[effectd: earlier output omitted, {size} bytes in all; stream_effect reads all of it]\n{text}"
    return text


class _CountingBus:
    """The server's SubscriptionBus: an in-memory bus that also knows whether anyone listens."""

    def __init__(self, on_count: Callable[[], None]) -> None:
        self._bus = InMemorySubscriptionBus()
        self._on_count = on_count
        self.listeners = 0

    async def publish(self, event: ServerEvent) -> None:
        await self._bus.publish(event)

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        unsubscribe = self._bus.subscribe(listener)
        self.listeners += 1
        self._on_count()
        done = False

        def once() -> None:
            nonlocal done
            if not done:
                done = True
                unsubscribe()
                self.listeners -= 1
                self._on_count()

        return once


class ResourceFeed:
    """Registers the effect resources on an MCP server and notifies its subscribers of changes."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.bus = _CountingBus(self._listeners_changed)
        # resources/subscribe (pre-2026 clients): the subscribed URIs of each live connection.
        self._legacy: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
        self._sizes: dict[str, int] = {}
        self._listening = anyio.Event()
        self._running = False

    def install(self, server: MCPServer[Engine]) -> None:
        """Adds the two resource templates and the resources/subscribe handlers to `server` (which must
        have been built with `subscriptions=self.bus`)."""
        server.resource(RECORD_URI, name="effect", title="Effect record", mime_type="application/json")(effect_record)
        server.resource(OUTPUT_URI, name="effect_output", title="Effect output", mime_type="text/plain")(effect_output)
        inner = lowlevel(server)
        inner.add_request_handler("resources/subscribe", SubscribeRequestParams, self._subscribe)
        inner.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, self._unsubscribe)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Runs the pump in the feed's own task group for the context (once, however often it is entered)."""
        if self._running:
            yield
            return
        self._running = True
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._pump)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        finally:
            self._running = False

    # --- resources/subscribe (handshake-era clients) ----------------------------------------------

    async def _subscribe(self, ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams) -> EmptyResult:
        uri = str(params.uri)
        match = _URI.match(uri)
        if match is None:
            raise MCPError(INVALID_PARAMS, f"cannot subscribe to {uri!r}: effectd serves {RECORD_URI} and {OUTPUT_URI}")
        try:
            await self.engine.poll(match["effect_id"])
        except UnknownEffectError as exc:
            raise MCPError(INVALID_PARAMS, str(exc)) from exc
        self._legacy.setdefault(connection_of(ctx.session), set()).add(uri)
        self._listeners_changed()
        return EmptyResult()

    async def _unsubscribe(self, ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams) -> EmptyResult:
        connection = connection_of(ctx.session)
        uris = self._legacy.get(connection)
        if uris is not None:
            uris.discard(str(params.uri))
            if not uris:
                del self._legacy[connection]
        self._listeners_changed()
        return EmptyResult()

    # --- following the engine's changes -----------------------------------------------------------

    def _wanted(self) -> bool:
        return self.bus.listeners > 0 or any(self._legacy.values())

    def _listeners_changed(self) -> None:
        self._listening.set()

    async def _pump(self) -> None:
        while True:
            while not self._wanted():
                await self._listening.wait()
                self._listening = anyio.Event()
            async with self.engine.changes(per_second=UPDATES_PER_S) as changes:
                while self._wanted():
                    self._listening = anyio.Event()
                    batch = await changes.next_within(1.0)  # wakes now and then to see who still listens
                    if batch:
                        await self._publish(batch)
            self._sizes.clear()

    async def _publish(self, effect_ids: list[str]) -> None:
        for uri in await self._uris(effect_ids):
            try:
                await self.bus.publish(ResourceUpdated(uri=uri))
                for connection, uris in list(self._legacy.items()):
                    if uri in uris:
                        await connection.send_resource_updated(uri)
            except Exception:  # a subscriber that went away must not stop the server
                log.exception("resource update for %s could not be sent", uri)

    async def _uris(self, effect_ids: list[str]) -> list[str]:
        uris = []
        for effect_id in effect_ids:
            try:
                record = await self.engine.poll(effect_id)
            except UnknownEffectError:
                continue
            uris.append(record_uri(effect_id))
            terminal = record.status in ("succeeded", "failed", "cancelled", "skipped")
            if self._sizes.get(effect_id) != record.output_bytes or terminal:
                uris.append(output_uri(effect_id))
            if terminal:
                self._sizes.pop(effect_id, None)
            else:
                self._sizes[effect_id] = record.output_bytes
        return uris
