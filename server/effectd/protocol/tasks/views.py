"""Effects and flows seen as MCP tasks (SEP-2663, the `io.modelcontextprotocol/tasks` extension).

A task is an effect (its id is the effect id) or a flow (the flow id). Its wire shape is the flat `Task`
of the 2026-07-28 extension, which the reference client (`@modelcontextprotocol/ext-tasks`) validates:
`taskId`, `status`, `statusMessage`, `createdAt`, `lastUpdatedAt`, `ttlMs` (null: effectd keeps every
task as long as its journal), `pollIntervalMs`; a `completed` task adds `result`, the `CallToolResult`
the foreground tool call returns once the work ended. mcp 2.3's own `Task` types are the 2025-11-25
shapes (a nested `task`, `ttl`), so these are plain dicts.

Statuses: an effect pending, queued or running is `working`; cancelled is `cancelled`; any other end
(succeeded, failed, skipped) is `completed`: a failed command is a tool result, not a protocol error.
A flow maps the same way from the flow's own status.

A task whose effect (or, for a flow, one of its steps) waits for an approval (issue 25) is
`input_required`, with one `elicitation/create` form per pending approval in `inputRequests`, keyed by
the approval id; `tasks/update` answers them (`answer_inputs`). The same approval can be answered
with `answer_approval`, the dashboard or the command line: the task is `working` again once none waits.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from typing import Any

from effectd.engine.core import Engine
from effectd.errors import EffectdError, UnknownEffectError
from effectd.flows.models import FlowRecord
from effectd.model.records import EffectRecord

POLL_INTERVAL_MS = 1000
MESSAGE_LIMIT = 200  # characters of an output line shown as a status message

# The foreground tool's result for a finished record (the tool's own output conversion), as wire JSON.
ResultOf = Callable[[EffectRecord | FlowRecord], dict[str, Any]]


@dataclass(frozen=True)
class TaskView:
    """One task as `tasks/get` answers it (without `resultType`)."""

    task_id: str
    status: str
    status_message: str
    created_at: str
    last_updated_at: str
    result: dict[str, Any] | None = None
    input_requests: dict[str, Any] | None = None  # input_required: the pending approvals, as elicitations

    def to_wire(self) -> dict[str, Any]:
        task: dict[str, Any] = {
            "taskId": self.task_id,
            "status": self.status,
            "statusMessage": self.status_message,
            "createdAt": self.created_at,
            "lastUpdatedAt": self.last_updated_at,
            "ttlMs": None,
            "pollIntervalMs": POLL_INTERVAL_MS,
        }
        if self.result is not None:
            task["result"] = self.result
        if self.input_requests is not None:
            task["inputRequests"] = self.input_requests
        return task


async def view_task(engine: Engine, task_id: str, effect_result: ResultOf, flow_result: ResultOf) -> TaskView:
    """The task `task_id` names (an effect, else a flow); UnknownEffectError when it is neither."""
    try:
        record = await engine.poll(task_id)
    except UnknownEffectError:
        try:
            flow = await engine.poll_flow(task_id)
        except UnknownEffectError:
            raise UnknownEffectError(f"unknown task {task_id!r}: no effect or flow with this id") from None
        return asking(flow_view(flow, flow_result), engine.approvals.list(group=task_id, status="pending"))
    view = effect_view(record, await queue_place(engine, record), effect_result)
    return asking(view, engine.approvals.list(effect_id=task_id, status="pending"))


def asking(view: TaskView, pending: Sequence[Mapping[str, Any]]) -> TaskView:
    """The view `input_required` while some approval of its task waits (and the task has not ended)."""
    if not pending or view.status != "working":
        return view
    first = pending[0]
    more = f" (and {len(pending) - 1} more)" if len(pending) > 1 else ""
    return replace(
        view,
        status="input_required",
        status_message=_line(f"waiting for approval: {first['tool']} {_summary(first['input'])}{more}"),
        input_requests={approval["approval_id"]: elicitation(approval) for approval in pending},
    )


DECISION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "decision": {"type": "string", "title": "Decision", "enum": ["allow", "deny"]},
        "message": {"type": "string", "title": "Message", "description": "why (the sub-agent reads it on a denial)"},
    },
    "required": ["decision"],
}


def elicitation(approval: Mapping[str, Any]) -> dict[str, Any]:
    """One pending approval as the `elicitation/create` form a tasks client shows its user."""
    who = f"effect {approval['effect_id']}"
    if approval["tool"] == "start":
        text = f"Flow step {approval['input'].get('step_id')} ({who}) waits for its start. Allow it to start?"
    else:
        text = f"The sub-agent of {who} asks to use {approval['tool']}: {_summary(approval['input'], 500)}. Allow it?"
    params = {"mode": "form", "message": text, "requestedSchema": DECISION_SCHEMA}
    return {"method": "elicitation/create", "params": params}


def _summary(tool_input: Any, limit: int = 120) -> str:
    text = json.dumps(tool_input, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def queue_place(engine: Engine, record: EffectRecord) -> tuple[int, int] | None:
    """(place, of): where a queued effect stands among the queued effects, oldest first."""
    if record.status != "queued":
        return None
    queued = [r.effect_id for r in reversed((await engine.list_effects(statuses=["queued"], limit=1000)).effects)]
    return (queued.index(record.effect_id) + 1, len(queued)) if record.effect_id in queued else None


def effect_view(
    record: EffectRecord, queue_place: tuple[int, int] | None, result_of: ResultOf | None = None
) -> TaskView:
    status = _TASK_STATUS[record.status]
    stamps = [s for s in (record.created_at, record.started_at, record.last_output_at, record.finished_at) if s]
    return TaskView(
        task_id=record.effect_id,
        status=status,
        status_message=effect_message(record, queue_place),
        created_at=record.created_at or stamps[0],
        last_updated_at=max(stamps),
        result=result_of(record) if status == "completed" and result_of is not None else None,
    )


def flow_view(record: FlowRecord, result_of: ResultOf | None = None) -> TaskView:
    status = "working" if record.status == "running" else _TASK_STATUS[record.status]
    stamps = [record.started_at, *(s for step in record.steps for s in (step.started_at, step.finished_at) if s)]
    if record.finished_at:
        stamps.append(record.finished_at)
    return TaskView(
        task_id=record.flow_id,
        status=status,
        status_message=flow_message(record),
        created_at=record.started_at,
        last_updated_at=max(stamps),
        result=result_of(record) if status == "completed" and result_of is not None else None,
    )


_TASK_STATUS = {
    "pending": "working",
    "queued": "working",
    "running": "working",
    "succeeded": "completed",
    "failed": "completed",
    "skipped": "completed",
    "cancelled": "cancelled",
}


def _line(text: str) -> str:
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


def last_line(text: str) -> str | None:
    for line in reversed(text.splitlines()):
        if line.strip():
            return line.strip()
    return None


def effect_message(record: EffectRecord, queue_place: tuple[int, int] | None) -> str:
    """What the effect is doing: the harness's latest text or the latest output line while it runs,
    its place in the queue, what it waits for; how it ended."""
    match record.status:
        case "running":
            latest = (record.progress or {}).get("last_text") or last_line(record.output_tail)
            return _line(str(latest)) if latest else f"running (pid {record.pid}), no output yet"
        case "queued":
            if queue_place is not None:
                place, of = queue_place
                return f"queued: place {place} of {of} waiting for a free slot"
            return "queued: waiting for a free slot"
        case "pending":
            return "pending: waiting for " + (", ".join(record.depends_on) or "its dependencies")
        case "cancelled":
            reason = f"cancelled (reason: {record.cancel_reason or 'unknown'}"
            return _line(reason + (f": {record.cancel_message})" if record.cancel_message else ")"))
        case "succeeded":
            return f"succeeded (exit code {record.exit_code}) in {record.duration_s or 0:.1f} s"
        case _:
            return _line(f"{record.status}: {record.error or f'exit code {record.exit_code}'}")


def flow_message(record: FlowRecord) -> str:
    """`3/7 steps done, 2 running` while the flow runs; its status and count once it ended."""
    total = len(record.steps)
    done = sum(1 for s in record.steps if s.status in ("succeeded", "failed", "cancelled", "skipped"))
    running = sum(1 for s in record.steps if s.status == "running")
    counted = f"{done}/{total} steps done"
    if record.status == "running":
        return f"{counted}, {running} running"
    return f"{record.status}: {counted}"


async def answer_inputs(engine: Engine, task_id: str, responses: Mapping[str, Any]) -> None:
    """`tasks/update`: answers the task's pending approvals its `inputResponses` name (an elicitation
    result each). A key that names no pending approval of this task, or a result of another shape, is
    left alone: an update is acknowledged whatever it holds."""
    pending = {
        approval["approval_id"]: approval
        for approval in [
            *engine.approvals.list(effect_id=task_id, status="pending"),
            *engine.approvals.list(group=task_id, status="pending"),
        ]
    }
    for key, response in responses.items():
        if key not in pending or not isinstance(response, Mapping):
            continue
        given = response.get("content")
        content: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
        message = content.get("message") if isinstance(content.get("message"), str) else None
        match response.get("action"), content.get("decision"):
            case "accept", "allow" | "deny" as decision:
                pass
            case "decline", _:
                decision, message = "deny", message or "declined by the client"
            case _:
                continue  # cancelled (dismissed) or malformed: still pending
        with suppress(EffectdError):  # answered meanwhile elsewhere: the first answer stands
            await engine.approvals.answer(key, decision, message=message, by="client")
