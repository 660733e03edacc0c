"""Requests from other processes to the live server: `effectd cancel` writes a row, the server acts on it.

The channel runs in its own task, polling the journal's `control` table every `poll_s`; one bad
request or a busy database never stops it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import anyio

from effectd.journal import Journal

log = logging.getLogger("effectd")

# Given an effect id, the reason text and the grace asked for: True once the cancel was asked for,
# False for an unknown id.
CancelHandler = Callable[[str, str | None, float | None], Awaitable[bool]]


class ControlChannel:
    def __init__(self, journal: Journal, on_cancel: CancelHandler, poll_s: float, server_id: str | None = None) -> None:
        self._journal = journal
        self._server_id = server_id  # set: only the requests for this server's effects (other servers share the table)
        self._on_cancel = on_cancel
        self._poll_s = poll_s

    async def run(self) -> None:
        while True:
            await anyio.sleep(self._poll_s)
            try:
                requests = await self._journal.open_requests(self._server_id)
            except Exception:  # a busy database: try again on the next tick
                log.exception("reading control requests failed")
                continue
            for request in requests:
                try:
                    await self._answer(request)
                except Exception:  # one bad request must not stop the server
                    log.exception("answering control request %s failed", request.get("id"))

    async def _answer(self, request: dict[str, object]) -> None:
        request_id = int(str(request["id"]))
        reason = request["reason"]
        grace = request.get("grace_s")
        known = await self._on_cancel(
            str(request["effect_id"]),
            str(reason) if reason is not None else None,
            float(str(grace)) if grace is not None else None,
        )
        # Answered at once; the command then follows the effect in the journal until it is terminal.
        await self._journal.answer_request(request_id, "accepted" if known else "unknown")
