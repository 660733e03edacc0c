"""Requests from other processes to the live server: `effectd cancel`, `effectd prune`, `effectd approve`
and `effectd deny` write a row, the server acts on it.

The channel runs in its own task, polling the journal's `control` table every `poll_s`; one bad
request or a busy database never stops it.

A request is carried out only within its window (`expires_at`, 10 s for `effectd cancel`): the server
first answers it with a conditional write that fails once the window has passed or the command has
withdrawn it (`JournalReader.expire_request`), and acts only when its answer is the one that counts.
So a command that reported "no live server answered" is never contradicted by a cancel carried out
later, by this server or by one started afterwards.

A cancel another server forwards has no window of wall-clock time (the servers' clocks need not
agree): the asking server withdraws it when this one does not answer in time (`Peers.withdraw`, the
same conditional write), and names itself in `args` (`by`), so a request whose asker died before it
could withdraw is answered `withdrawn` here, never carried out.

An approval's answer (`approve`, from `effectd approve`/`deny` or forwarded by another server's
`answer_approval`) goes to the server whose sub-agent waits for it, under the same rules; the approval
it comes to, or the refusal (unknown, already answered), is the request's `result`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from effectd.errors import EffectdError, InvalidRequestError, UnknownEffectError
from effectd.journal.control import answer_request, open_requests, request_result, server_row
from effectd.journal.store import Journal
from effectd.model.records import CancelReason
from effectd.peers.ownership import server_alive
from effectd.supervisor.core import Supervisor

log = logging.getLogger("effectd")

# Given the cutoff (ISO time) and whether to forget the journal's records too: the prune's report.
PruneHandler = Callable[[str, bool], Awaitable[dict[str, Any]]]
# Given the approval's id, the decision ("allow" | "deny"), the message, the updated input and who decided
# ("cli", or the forwarding server's caller): the approval answered (`Approvals.answer` on its own server).
ApprovalHandler = Callable[[str, str, str | None, dict[str, Any] | None, str], Awaitable[dict[str, Any]]]
# Who may be named as deciding in a request (`rule` and `timeout` are the server's own).
REQUESTERS = ("cli", "client", "dashboard")
# The reasons another server may forward with its cancel (`effectd cancel` gives none: `user`).
FORWARDED_REASONS: tuple[CancelReason, ...] = ("user", "superseded")


def _forwarded_reason(reason: object) -> CancelReason:
    """The cancel reason a forwarding server named (a race it decided: `superseded`), else `user`."""
    return next((r for r in FORWARDED_REASONS if r == reason), "user")


class ControlChannel:
    def __init__(
        self,
        journal: Journal,
        supervisor: Supervisor,
        on_prune: PruneHandler,
        poll_s: float,
        server_id: str | None = None,
        on_approve: ApprovalHandler | None = None,
    ) -> None:
        self._journal = journal
        self._supervisor = supervisor
        self._on_prune = on_prune
        self._on_approve = on_approve
        self._server_id = server_id  # set: only the requests for this server's effects (other servers share the table)
        self._poll_s = poll_s

    async def run(self) -> None:
        while True:
            await anyio.sleep(self._poll_s)
            try:
                requests = await open_requests(self._journal, self._server_id)
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
        if request["action"] == "approve" and self._on_approve is not None:
            await self._approve(request_id, json.loads(request["args"] or "{}"))
            return
        effect = None
        if request["action"] == "cancel":
            try:
                effect = await self._supervisor.get(str(request["effect_id"]))
            except UnknownEffectError:
                pass
        args = json.loads(request["args"] or "{}")
        if effect is not None and args.get("by") and not await self._asker_alive(str(args["by"])):
            await answer_request(self._journal, request_id, "withdrawn")  # nobody waits for it: never carried out
            return
        # Answered first, acted on only if the answer counts (the window has not passed meanwhile, the
        # asker has not withdrawn it); the asker then follows the effect in the journal until it is terminal.
        if await answer_request(self._journal, request_id, "unknown" if effect is None else "accepted") and effect:
            message, grace = request["reason"], request.get("grace_s")
            self._supervisor.request_cancel(
                effect,
                _forwarded_reason(args.get("reason")),
                str(message) if message is not None else None,
                float(grace) if grace is not None else None,
            )

    async def _approve(self, request_id: int, args: dict[str, Any]) -> None:
        """Answers an approval as the request says, once the request's answer counts (within its window,
        not withdrawn); what it came to is the request's result."""
        assert self._on_approve is not None
        if args.get("by") and not await self._asker_alive(str(args["by"])):
            await answer_request(self._journal, request_id, "withdrawn")  # nobody waits for it: never carried out
            return
        if not await answer_request(self._journal, request_id, "accepted"):
            return
        decision, by = args.get("decision"), args.get("decided_by")
        result: dict[str, Any]
        try:
            if decision not in ("allow", "deny"):
                raise InvalidRequestError(f"decision must be allow or deny, not {decision!r}")
            approval = await self._on_approve(
                str(args.get("approval_id")),
                str(decision),
                None if args.get("message") is None else str(args["message"]),
                args.get("updated_input") if isinstance(args.get("updated_input"), dict) else None,
                str(by) if by in REQUESTERS else "cli",
            )
            result = {"approval": approval}
        except EffectdError as exc:  # unknown, already answered: the asker says so
            result = {"error": str(exc), "unknown": isinstance(exc, UnknownEffectError)}
        except Exception as exc:
            log.exception("answering approval %s failed", args.get("approval_id"))
            result = {"error": str(exc) or type(exc).__name__}
        await request_result(self._journal, request_id, result)

    async def _asker_alive(self, server_id: str) -> bool:
        """Whether the server that forwarded a request still runs (and so still waits for it, or withdraws
        it): a request forwarded by a server that died meanwhile is never carried out later."""
        row = await server_row(self._journal, server_id)
        return row is not None and server_alive(row, self._journal.path)

    async def _prune(self, request_id: int, args: dict[str, Any]) -> None:
        if not await answer_request(self._journal, request_id, "accepted"):
            return
        try:
            report = await self._on_prune(str(args["before"]), bool(args.get("journal")))
        except Exception as exc:
            log.exception("effectd prune failed")
            report = {"error": str(exc) or type(exc).__name__}
        await request_result(self._journal, request_id, report)
