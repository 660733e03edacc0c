"""Requests from other processes to the live server: `effectd cancel` and `effectd prune` write a row,
the server acts on it.

The channel runs in its own task, polling the journal's `control` table every `poll_s`; one bad
request or a busy database never stops it.

A request is carried out only within its window (`expires_at`, 10 s for `effectd cancel`): the server
first answers it with a conditional write that fails once the window has passed or the command has
withdrawn it (`JournalReader.expire_request`), and acts only when its answer is the one that counts.
So a command that reported "no live server answered" is never contradicted by a cancel carried out
later, by this server or by one started afterwards.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from effectd.journal import Journal

log = logging.getLogger("effectd")

# Given an effect id: whether the server knows it.
KnownHandler = Callable[[str], Awaitable[bool]]
# Given an effect id and the reason text: asks for the cancel of a known effect.
CancelHandler = Callable[[str, str | None], Awaitable[None]]
# Given a prune request's arguments: the report of what was pruned.
PruneHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlChannel:
    def __init__(
        self,
        journal: Journal,
        *,
        known: KnownHandler,
        on_cancel: CancelHandler,
        on_prune: PruneHandler,
        poll_s: float,
    ) -> None:
        self._journal = journal
        self._known = known
        self._on_cancel = on_cancel
        self._on_prune = on_prune
        self._poll_s = poll_s

    async def run(self) -> None:
        while True:
            await anyio.sleep(self._poll_s)
            try:
                requests = await self._journal.open_requests()
            except Exception:  # a busy database: try again on the next tick
                log.exception("reading control requests failed")
                continue
            for request in requests:
                try:
                    await self._answer(request)
                except Exception:  # one bad request must not stop the server
                    log.exception("answering control request %s failed", request.get("id"))

    async def _answer(self, request: dict[str, Any]) -> None:
        request_id = int(request["id"])
        if request["action"] == "prune":
            await self._prune(request_id, json.loads(request["args"] or "{}"))
            return
        if request["action"] != "cancel":
            await self._journal.answer_request(request_id, "unknown")
            return
        effect_id = str(request["effect_id"])
        known = await self._known(effect_id)
        # Answered first, acted on only if the answer counts (the window has not passed meanwhile); the
        # command then follows the effect in the journal until it is terminal.
        if await self._journal.answer_request(request_id, "accepted" if known else "unknown") and known:
            reason = request["reason"]
            await self._on_cancel(effect_id, str(reason) if reason is not None else None)

    async def _prune(self, request_id: int, args: dict[str, Any]) -> None:
        if not await self._journal.answer_request(request_id, "accepted"):
            return
        try:
            report = await self._on_prune(args)
        except Exception as exc:
            log.exception("effectd prune failed")
            report = {"error": str(exc) or type(exc).__name__}
        await self._journal.request_result(request_id, report)
