"""The projection tables as a pure fold over events, shared by the live writer and by replay.

Because the live writer and `replay` run this same code, replaying the events rebuilds the
projection exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

EFFECT_COLUMNS = (
    "effect_id", "run_id", "group_name", "label", "key", "kind", "harness", "command", "spec", "status",
    "cancel_reason", "cancel_message", "error", "exit_code", "signal", "created_at", "started_at", "finished_at",
    "result", "output_bytes", "output_truncated", "depends_on", "pid", "pid_start", "attempt", "progress",
    "terminal_seq", "flow_id", "step_id",
)  # fmt: skip
FLOW_COLUMNS = ("flow_id", "run_id", "policy", "max_concurrency", "steps", "status", "started_at", "finished_at")

TERMINAL_EVENTS = {
    "EFFECT_RESOLVED": "succeeded",
    "EFFECT_FAILED": "failed",
    "EFFECT_CANCELLED": "cancelled",
    "EFFECT_SKIPPED": "skipped",
}
EVENT_TYPES = frozenset(
    {
        "RUN_CREATED",
        "EFFECT_REQUESTED",
        "EFFECT_STARTED",
        "EFFECT_PROGRESS",
        "EFFECT_CANCEL_REQUESTED",
        *TERMINAL_EVENTS,
        "FLOW_REQUESTED",
        "FLOW_COMPLETED",
    }
)


@dataclass(frozen=True)
class Event:
    """One journal event. `seq` is given by the journal when the event is appended."""

    type: str
    run_id: str | None
    effect_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    ts: str = ""
    seq: int = 0


TERMINAL_EVENT_OF = {status: event for event, status in TERMINAL_EVENTS.items()}


def terminal_event(
    status: str,
    run_id: str,
    effect_id: str,
    finished_at: str,
    *,
    exit_code: int | None = None,
    signal: int | None = None,
    error: str | None = None,
    result: Any = None,
    output_bytes: int = 0,
    output_truncated: bool = False,
    attempt: int | None = None,
    cancel_reason: str | None = None,
    cancel_message: str | None = None,
    progress: dict[str, Any] | None = None,
) -> Event:
    """The one terminal event of an effect (EFFECT_RESOLVED, _FAILED, _CANCELLED or _SKIPPED)."""
    data: dict[str, Any] = {
        "finished_at": finished_at,
        "exit_code": exit_code,
        "signal": signal,
        "error": error,
        "result": result,
        "output_bytes": output_bytes,
        "output_truncated": output_truncated,
    }
    if attempt is not None:
        data["attempt"] = attempt
    if status == "cancelled":
        data.update(cancel_reason=cancel_reason or "user", cancel_message=cancel_message)
    if progress is not None:
        data["progress"] = progress
    return Event(TERMINAL_EVENT_OF[status], run_id, effect_id, data)


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def fold_effect(row: dict[str, Any] | None, event: Event) -> dict[str, Any] | None:
    """The effect's projection row after `event` (a new dict; `row` is not changed)."""
    data = event.data
    if event.type == "EFFECT_REQUESTED":
        spec = data["spec"]
        return {
            "effect_id": event.effect_id,
            "run_id": event.run_id,
            "group_name": spec.get("group"),
            "label": spec.get("label"),
            "key": spec.get("key"),
            "kind": spec["kind"],
            "harness": spec.get("harness"),
            "command": _dumps(spec["command"]),
            "spec": _dumps(spec),
            "status": "pending" if spec.get("depends_on") else "queued",
            "cancel_reason": None,
            "cancel_message": None,
            "error": None,
            "exit_code": None,
            "signal": None,
            "created_at": data["created_at"],
            "started_at": None,
            "finished_at": None,
            "result": None,
            "output_bytes": 0,
            "output_truncated": 0,
            "depends_on": _dumps(spec.get("depends_on") or []),
            "pid": None,
            "pid_start": None,
            "attempt": 0,
            "progress": None,
            "terminal_seq": None,
            "flow_id": spec.get("flow_id"),
            "step_id": spec.get("step_id"),
        }
    if row is None:
        return None
    row = dict(row)
    if event.type == "EFFECT_STARTED":
        row.update(
            status="running",
            started_at=data["started_at"],
            pid=data.get("pid"),
            pid_start=data.get("pid_start"),
            command=_dumps(data["command"]),
            attempt=data.get("attempt", 1),
            finished_at=None,
            exit_code=None,
            signal=None,
            error=None,
        )
    elif event.type == "EFFECT_CANCEL_REQUESTED":
        # Kept on the running row, so a server that dies during the grace still knows who asked.
        row.update(cancel_reason=data.get("reason"), cancel_message=data.get("message"))
    elif event.type == "EFFECT_PROGRESS":
        if "progress" in data:
            row["progress"] = _dumps(data["progress"])
        if "retry" in data:
            # A failed attempt that will be tried again: back to the queue, its outcome kept in `error`.
            retry = data["retry"]
            row.update(
                status="queued",
                pid=None,
                error=retry.get("error"),
                exit_code=retry.get("exit_code"),
                attempt=retry.get("attempt", row["attempt"]),
            )
    elif event.type in TERMINAL_EVENTS:
        row.update(
            status=TERMINAL_EVENTS[event.type],
            finished_at=data["finished_at"],
            exit_code=data.get("exit_code"),
            signal=data.get("signal"),
            error=data.get("error"),
            result=_dumps(data.get("result")),
            cancel_reason=data.get("cancel_reason"),
            cancel_message=data.get("cancel_message"),
            output_bytes=data.get("output_bytes", row["output_bytes"]),
            output_truncated=int(bool(data.get("output_truncated", row["output_truncated"]))),
            pid=None,
            terminal_seq=event.seq,
            attempt=data.get("attempt", row["attempt"]),
        )
        if data.get("started_at"):
            row["started_at"] = data["started_at"]
        if "progress" in data:
            row["progress"] = _dumps(data["progress"])
    return row


def fold_flow(row: dict[str, Any] | None, event: Event) -> dict[str, Any] | None:
    data = event.data
    if event.type == "FLOW_REQUESTED":
        return {
            "flow_id": data["flow_id"],
            "run_id": event.run_id,
            "policy": data["policy"],
            "max_concurrency": data.get("max_concurrency"),
            "steps": _dumps(data["steps"]),
            "status": "running",
            "started_at": data["started_at"],
            "finished_at": None,
        }
    if row is None:
        return None
    if event.type == "FLOW_COMPLETED":
        return {**row, "status": data["status"], "finished_at": data["finished_at"]}
    return row
