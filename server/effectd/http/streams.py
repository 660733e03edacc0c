"""The dashboard's live streams, as server-sent events read with `fetch` (so they carry the token
header like every API call).

`/api/events` subscribes to the engine's change feed, which only records which effects changed; the
stream sends their rows at most MESSAGES_PER_S times a second, with this server's pending approvals
whenever they differ from those it sent last (a request and its answer change their effect, so the
feed carries them too). `/api/effects/{id}/output/stream` sends
an effect's output as it comes, then its end. Both send a comment every KEEPALIVE_S to keep proxies
from closing them, and both end when the server stops.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import suppress
from functools import partial

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from effectd.engine.core import Engine
from effectd.errors import UnknownEffectError
from effectd.http.stopping import Stop
from effectd.http.wire import approval_row, int_param, row_of, sse
from effectd.model.records import now_iso

MESSAGES_PER_S = 10  # live streams send at most this many messages a second (bursts are coalesced)
KEEPALIVE_S = 15.0  # a comment line on an idle stream this often
SNAPSHOT_LIMIT = 500  # effects in the first message of /api/events
OUTPUT_CHUNK_BYTES = 256 * 1024  # the most output one message of the output stream carries
_KEEPALIVE = b": keep-alive\n\n"
_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class LiveStreams:
    """The two event-stream endpoints over one engine; each ends at `stop`."""

    def __init__(self, engine: Engine, *, stop: Stop) -> None:
        self.engine = engine
        self.stop = stop

    def routes(self) -> list[Route]:
        return [
            Route("/api/effects/{effect_id}/output/stream", self.output),
            Route("/api/events", self.events),
        ]

    async def events(self, request: Request) -> Response:
        """Server-sent events: `snapshot` (the newest effects and the pending approvals) once, then `effects`
        with the rows that changed, and `approvals` (all pending ones) when they changed. The approvals are
        those an answer from here reaches (`Approvals.answerable`)."""
        limit = int_param(request, "limit", SNAPSHOT_LIMIT, 1, 5000)
        engine, stop = self.engine, self.stop

        async def stream() -> AsyncIterator[bytes]:
            # Everything is set up inside the generator, so a client gone before it starts leaves nothing behind.
            # Subscribed before the snapshot is read, so no change between the two is lost.
            async with engine.changes(per_second=MESSAGES_PER_S) as changes:
                with stop.closes(changes.close):
                    listed = await engine.list_effects(limit=limit, summary=False)
                    snapshot = [row_of(r) for r in listed.effects]
                    pending = await engine.approvals.answerable()
                    sent = [approval["approval_id"] for approval in pending]
                    approvals = [approval_row(approval) for approval in pending]
                    first = {"version": engine.version, "now": now_iso(), "effects": snapshot, "approvals": approvals}
                    yield sse("snapshot", first)
                    while not stop.is_set():
                        batch = await changes.next_within(KEEPALIVE_S)
                        if stop.is_set() or changes.closed:
                            return
                        if not batch:
                            yield _KEEPALIVE
                            continue
                        rows = []
                        for effect_id in batch:
                            with suppress(UnknownEffectError):
                                rows.append(row_of(await engine.poll(effect_id)))
                        message = {"version": engine.version, "now": now_iso(), "effects": rows}
                        pending = await engine.approvals.answerable()
                        if [approval["approval_id"] for approval in pending] != sent:
                            sent = [approval["approval_id"] for approval in pending]
                            message["approvals"] = [approval_row(approval) for approval in pending]
                        yield sse("effects", message)

        return StreamingResponse(stream(), media_type="text/event-stream", headers=_HEADERS)

    async def output(self, request: Request) -> Response:
        """Server-sent events of an effect's output from byte `cursor`: `output` chunks, then `end`."""
        cursor = int_param(request, "cursor", 0, 0, 1 << 62)
        effect_id = request.path_params["effect_id"]
        await self.engine.poll(effect_id)  # an unknown id is a 404 before the stream starts
        engine, stop = self.engine, self.stop

        async def stream() -> AsyncIterator[bytes]:
            at = cursor
            while not stop.is_set():
                chunk = await engine.read_output(effect_id, at, OUTPUT_CHUNK_BYTES)
                if chunk.data or chunk.cursor != at:
                    at = chunk.cursor
                    yield sse("output", {"data": chunk.data, "cursor": at})
                    await anyio.sleep(1 / MESSAGES_PER_S)  # coalesce: what arrives meanwhile goes in one message
                    continue
                if chunk.eof:
                    yield sse("end", {"cursor": at, "status": chunk.status})
                    return
                waited_from = time.monotonic()
                await stop.first(partial(engine.read_output, effect_id, at, 1, KEEPALIVE_S))
                if time.monotonic() - waited_from >= KEEPALIVE_S:
                    yield _KEEPALIVE

        return StreamingResponse(stream(), media_type="text/event-stream", headers=_HEADERS)
