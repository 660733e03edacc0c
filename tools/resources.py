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

Changes are coalesced: the pump publishes at most ten times a second, one event per changed URI. The
record URI changes with any change of the effect (status, output size, progress); the output URI when
output arrived or the effect ended. The supervisor observer is attached only while someone listens.
"""

from __future__ import annotations

import logging
import re
import time
import weakref
from collections.abc import Callable
from typing import Any

import anyio
from effectd.engine import Engine
from effectd.errors import UnknownEffectError
from effectd.supervisor import Effect
from effectd.tools._base import engine_of
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourceUpdated, ServerEvent
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, EmptyResult, SubscribeRequestParams, UnsubscribeRequestParams

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


async def _effect(ctx: Context[Any, Any], effect_id: str) -> Effect:
    try:
        return await engine_of(ctx).supervisor.get(effect_id)
    except UnknownEffectError as exc:
        raise ResourceNotFoundError(str(exc)) from exc


async def effect_record(effect_id: str, ctx: Context[Any, Any]) -> str:
    """An effect's record (the object poll_effect returns), as JSON."""
    return (await _effect(ctx, effect_id)).record().model_dump_json(indent=2)


async def effect_output(effect_id: str, ctx: Context[Any, Any]) -> str:
    """An effect's combined stdout and stderr so far (the last 256 KiB at most; stream_effect reads all)."""
    output = (await _effect(ctx, effect_id)).output
    start = max(0, output.size - OUTPUT_LIMIT_BYTES)
    text, _ = output.read(start, OUTPUT_LIMIT_BYTES)
    if start > 0:
        first_line = text.find("\n")
        text = text[first_line + 1 :] if 0 <= first_line < 4096 else text
        return f"[effectd: earlier output omitted, {output.size} bytes in all; stream_effect reads all of it]\n{text}"
    return text


class _CountingBus:
    """The server's SubscriptionBus: an in-memory bus that also knows whether anyone listens."""

    def __init__(self, on_count: Callable[[int], None]) -> None:
        self._bus = InMemorySubscriptionBus()
        self._on_count = on_count
        self.listeners = 0

    async def publish(self, event: ServerEvent) -> None:
        await self._bus.publish(event)

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        unsubscribe = self._bus.subscribe(listener)
        self.listeners += 1
        self._on_count(self.listeners)
        done = False

        def once() -> None:
            nonlocal done
            if not done:
                done = True
                unsubscribe()
                self.listeners -= 1
                self._on_count(self.listeners)

        return once


class ResourceFeed:
    """Registers the effect resources on an MCP server and notifies its subscribers of changes."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.bus = _CountingBus(lambda _: self._observe_while_needed())
        # resources/subscribe (pre-2026 clients): the subscribed URIs of each live connection.
        self._legacy: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
        self._changed: dict[str, Effect] = {}
        self._sizes: dict[str, int] = {}
        self._observing = False
        self._pumping = False

    def install(self, server: MCPServer[Engine]) -> None:
        """Adds the two resource templates and the resources/subscribe handlers to `server` (which must
        have been built with `subscriptions=self.bus`)."""
        server.resource(RECORD_URI, name="effect", title="Effect record", mime_type="application/json")(effect_record)
        server.resource(OUTPUT_URI, name="effect_output", title="Effect output", mime_type="text/plain")(effect_output)
        lowlevel = server._lowlevel_server
        lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, self._subscribe)
        lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, self._unsubscribe)

    # --- resources/subscribe (handshake-era clients) ----------------------------------------------

    async def _subscribe(self, ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams) -> EmptyResult:
        uri = str(params.uri)
        match = _URI.match(uri)
        if match is None:
            raise MCPError(INVALID_PARAMS, f"cannot subscribe to {uri!r}: effectd serves {RECORD_URI} and {OUTPUT_URI}")
        try:
            await self.engine.supervisor.get(match["effect_id"])
        except UnknownEffectError as exc:
            raise MCPError(INVALID_PARAMS, str(exc)) from exc
        self._legacy.setdefault(self._connection(ctx), set()).add(uri)
        self._observe_while_needed()
        return EmptyResult()

    async def _unsubscribe(self, ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams) -> EmptyResult:
        uris = self._legacy.get(self._connection(ctx))
        if uris is not None:
            uris.discard(str(params.uri))
            if not uris:
                del self._legacy[self._connection(ctx)]
        self._observe_while_needed()
        return EmptyResult()

    @staticmethod
    def _connection(ctx: ServerRequestContext[Any, Any]) -> Any:
        # The per-client Connection behind the per-request ServerSession: it is what outlives the request
        # and carries notifications on the standalone stream. Held weakly, so a closed one drops out.
        return getattr(ctx.session, "_connection", ctx.session)

    # --- watching the supervisor ------------------------------------------------------------------

    def _wanted(self) -> bool:
        return self.bus.listeners > 0 or any(self._legacy.values())

    def _observe_while_needed(self) -> None:
        observers = self.engine.supervisor.on_change
        if self._wanted() and not self._observing:
            observers.append(self._observe)
            self._observing = True
        elif not self._wanted() and self._observing:
            if self._observe in observers:
                observers.remove(self._observe)
            self._observing = False
            self._changed.clear()
            self._sizes.clear()

    def _observe(self, effect: Effect) -> None:
        """Called by the supervisor on every change: records it and makes sure the pump runs."""
        self._changed[effect.effect_id] = effect
        if not self._pumping:
            self._pumping = True
            try:
                self.engine.supervisor.start_soon(self._pump)
            except RuntimeError:  # the supervisor has stopped: nobody is left to notify
                self._pumping = False

    async def _pump(self) -> None:
        try:
            while self._changed:
                started = time.monotonic()
                batch, self._changed = self._changed, {}
                for uri in self._uris(batch.values()):
                    try:
                        await self.bus.publish(ResourceUpdated(uri=uri))
                        for connection, uris in list(self._legacy.items()):
                            if uri in uris:
                                await connection.send_resource_updated(uri)
                    except Exception:  # a subscriber that went away must not stop the server
                        log.exception("resource update for %s could not be sent", uri)
                await anyio.sleep(max(0.0, started + 1 / UPDATES_PER_S - time.monotonic()))
        finally:
            self._pumping = False
            self._observe_while_needed()  # a connection that closed without unsubscribing has dropped out

    def _uris(self, effects: Any) -> list[str]:
        uris = []
        for effect in effects:
            uris.append(record_uri(effect.effect_id))
            size = effect.output.size
            if self._sizes.get(effect.effect_id) != size or effect.terminal:
                uris.append(output_uri(effect.effect_id))
            if effect.terminal:
                self._sizes.pop(effect.effect_id, None)
            else:
                self._sizes[effect.effect_id] = size
        return uris
