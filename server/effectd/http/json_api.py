"""The dashboard's JSON API under `/api/`: queries (info, runs, groups, flows, effects, output,
approvals), cancels and answers to approvals. Every answer comes from a public `Engine` method; a cancel
takes the same engine path as the MCP tools, with the message "from the dashboard", and an answer the
same as `answer_approval`, decided by "dashboard"."""

from __future__ import annotations

import json
from functools import partial
from typing import get_args

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from effectd.engine.core import Engine
from effectd.http.stopping import Stop
from effectd.http.wire import (
    BadRequest,
    approval_row,
    cost_of,
    float_param,
    int_param,
    json_body,
    row_of,
    statuses_param,
)
from effectd.model.records import Approval, CancelledGroup

CANCEL_MESSAGE = "from the dashboard"
APPROVAL_STATUSES: tuple[str, ...] = get_args(Approval.model_fields["status"].annotation)
ANSWER_SHAPE = '{"decision": "allow" | "deny", "message"?: string}'
MAX_MESSAGE = 10_000  # as answer_approval's


class JsonApi:
    """The JSON endpoints over one engine. `version` is the server's, shown by `/api/info`; `stop` ends
    a long poll of `/api/effects/{id}/output` early."""

    def __init__(self, engine: Engine, *, version: str, stop: Stop) -> None:
        self.engine = engine
        self.version = version
        self.stop = stop

    def routes(self) -> list[Route]:
        return [
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
            Route("/api/effects/{effect_id}/cancel", self.cancel_effect, methods=["POST"]),
            Route("/api/budgets", self.budgets),
            Route("/api/approvals", self.approvals),
            Route("/api/approvals/{approval_id}/answer", self.answer_approval, methods=["POST"]),
        ]

    # --- queries ----------------------------------------------------------------------------------

    async def info(self, request: Request) -> Response:
        return JSONResponse({"server": "effectd", "version": self.version, **self.engine.info()})

    async def runs(self, request: Request) -> Response:
        return JSONResponse({"runs": await self.engine.runs(int_param(request, "limit", 100, 1, 1000))})

    async def groups(self, request: Request) -> Response:
        limit = int_param(request, "limit", 100, 1, 1000)
        groups = await self.engine.groups(run_id=request.query_params.get("run_id") or None, limit=limit)
        return JSONResponse({"groups": groups})

    async def flows(self, request: Request) -> Response:
        limit = int_param(request, "limit", 100, 1, 1000)
        flows = await self.engine.flows(run_id=request.query_params.get("run_id") or None, limit=limit)
        return JSONResponse({"flows": flows})

    async def flow(self, request: Request) -> Response:
        record = await self.engine.poll_flow(request.path_params["flow_id"])
        return JSONResponse(record.model_dump(mode="json"))

    async def effects(self, request: Request) -> Response:
        limit = int_param(request, "limit", 200, 1, 5000)
        group = request.query_params.get("group") or request.query_params.get("flow_id")
        listed = await self.engine.list_effects(
            run_id=request.query_params.get("run_id") or None,
            group=group or None,
            statuses=statuses_param(request),
            limit=limit,
            summary=False,
        )
        return JSONResponse({"effects": [row_of(r) for r in listed.effects], "version": self.engine.version})

    async def budgets(self, request: Request) -> Response:
        """Every budget with its scope's spending (`set_budget`'s answer, for each)."""
        return JSONResponse({"budgets": [budget.model_dump(mode="json") for budget in self.engine.budgets()]})

    async def effect(self, request: Request) -> Response:
        record = await self.engine.poll(request.path_params["effect_id"])
        return JSONResponse({**record.model_dump(mode="json"), "cost_usd": cost_of(record)})

    async def output(self, request: Request) -> Response:
        """Like the `stream_effect` tool: output from byte `cursor`, waiting up to `wait_s` for some."""
        cursor = int_param(request, "cursor", 0, 0, 1 << 62)
        max_bytes = int_param(request, "max_bytes", 65536, 1, 1 << 20)
        wait_s = float_param(request, "wait_s", 0.0, 0.0, 55.0)
        effect_id = request.path_params["effect_id"]
        chunk = await self.engine.read_output(effect_id, cursor, max_bytes)
        if wait_s > 0 and not chunk.data and not chunk.eof:
            # Ends early on a stop; then the chunk read below is what there is.
            await self.stop.first(partial(self.engine.read_output, effect_id, cursor, max_bytes, wait_s))
            chunk = await self.engine.read_output(effect_id, cursor, max_bytes)
        return JSONResponse(chunk.model_dump(mode="json"))

    async def approvals(self, request: Request) -> Response:
        """Like `list_approvals` (oldest first), each approval's tool input summarised (`approval_row`)."""
        status = request.query_params.get("status") or None
        if status is not None and status not in APPROVAL_STATUSES:
            raise BadRequest(f"unknown approval status {status}; allowed: {', '.join(APPROVAL_STATUSES)}")
        found = self.engine.approvals.list(
            run_id=request.query_params.get("run_id") or None,
            group=request.query_params.get("group") or None,
            effect_id=request.query_params.get("effect_id") or None,
            status=status,
        )
        return JSONResponse({"approvals": [approval_row(approval) for approval in found]})

    # --- cancelling -------------------------------------------------------------------------------

    async def cancel_effect(self, request: Request) -> Response:
        """The same engine path as the `cancel_effect` tool; answers once the effect's process group is gone."""
        record = await self.engine.cancel(request.path_params["effect_id"], message=CANCEL_MESSAGE)
        return JSONResponse({**record.model_dump(mode="json"), "cost_usd": cost_of(record)})

    async def cancel_group(self, request: Request) -> Response:
        return _cancelled(await self.engine.cancel_group(request.path_params["group"], message=CANCEL_MESSAGE))

    async def cancel_flow(self, request: Request) -> Response:
        return _cancelled(await self.engine.cancel_flow(request.path_params["flow_id"], message=CANCEL_MESSAGE))

    # --- answering approvals ---------------------------------------------------------------------

    async def answer_approval(self, request: Request) -> Response:
        """Allows or denies a pending approval, as `answer_approval` does (`decided_by: "dashboard"`); the body
        is checked whole before anything is answered. Answers the approval."""
        body = await json_body(request, ANSWER_SHAPE)
        unknown = sorted(set(body) - {"decision", "message"})
        if unknown:
            raise BadRequest(f"unknown field {', '.join(map(repr, unknown))}; expected {ANSWER_SHAPE}")
        decision, message = body.get("decision"), body.get("message")
        if decision not in ("allow", "deny"):
            raise BadRequest(f'`decision` must be "allow" or "deny", not {json.dumps(decision)}')
        if message is not None and (not isinstance(message, str) or len(message) > MAX_MESSAGE):
            raise BadRequest(f"`message` must be a string of at most {MAX_MESSAGE} characters, or absent")
        answered = await self.engine.approvals.answer(
            request.path_params["approval_id"], decision, message=(message or "").strip() or None, by="dashboard"
        )
        return JSONResponse(Approval.model_validate(answered).model_dump(mode="json"))


def _cancelled(cancelled: CancelledGroup) -> Response:
    return JSONResponse({"cancelled": cancelled.cancelled, "effects": [row_of(r) for r in cancelled.effects]})
