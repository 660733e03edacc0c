"""The one fold over events: an effect's state (`EffectState.apply`), and a flow's row.

The live effect in the supervisor, the journal's projection tables and replay all run this same
code, so memory, the journal and replay cannot drift apart (a property test holds them equal).
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
    "workspace", "owner", "output_pruned", "result_error", "cached", "reused_from", "node", "peak_memory_mb",
)  # fmt: skip
FLOW_COLUMNS = (
    "flow_id", "run_id", "policy", "max_concurrency", "steps", "status", "started_at", "finished_at", "owner",
    "resumed_from",
)  # fmt: skip

# `effectd prune` removed a finished effect's output log and result file: its output is gone (0 bytes).
OUTPUT_PRUNED = "EFFECT_OUTPUT_PRUNED"
# `effectd prune --journal` removed the events and rows of the effects and flows it names (data: counts).
JOURNAL_PRUNED = "JOURNAL_PRUNED"

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
        "BUDGET_SET",
        "BUDGET_EXCEEDED",
        OUTPUT_PRUNED,
        JOURNAL_PRUNED,
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
    result_error: str | None = None,
    output_bytes: int = 0,
    output_truncated: bool = False,
    attempt: int | None = None,
    cancel_reason: str | None = None,
    cancel_message: str | None = None,
    progress: dict[str, Any] | None = None,
    workspace: dict[str, Any] | None = None,
    reused_from: str | None = None,
    command: list[str] | None = None,
    peak_memory_mb: float | None = None,
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
    if result_error is not None:
        data["result_error"] = result_error
    if attempt is not None:
        data["attempt"] = attempt
    if status == "cancelled":
        data.update(cancel_reason=cancel_reason or "user", cancel_message=cancel_message)
    elif status == "skipped" and cancel_message is not None:  # a flow step whose start was denied: the message
        data["cancel_message"] = cancel_message
    if progress is not None:
        data["progress"] = progress
    if workspace is not None:
        data["workspace"] = workspace
    if reused_from is not None:  # a flow step taken from an earlier flow (resume): its outcome is that effect's
        data.update(cached=True, reused_from=reused_from)
    if command is not None:  # a step that started no process: the argv it carries (resume: the one that ran)
        data["command"] = command
    if peak_memory_mb is not None:  # limits (issue 23): what the effect's cgroup saw
        data["peak_memory_mb"] = peak_memory_mb
    return Event(TERMINAL_EVENT_OF[status], run_id, effect_id, data)


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


# Dependencies met: an effect that waited for `depends_on` now waits for a slot.
QUEUED = "queued"
# A failed attempt that will be tried again: back to the queue, its outcome kept in `error`.
RETRY = "retry"


@dataclass
class EffectState:
    """An effect's state as its events make it: the one fold behind the live effect, the projection
    table and replay. `apply` is the only code that changes it."""

    effect_id: str
    run_id: str
    spec: dict[str, Any]  # as journaled in EFFECT_REQUESTED
    created_at: str
    status: str
    command: list[str]
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    error: str | None = None
    result: Any = None
    result_error: str | None = None
    cancel_reason: str | None = None
    cancel_message: str | None = None
    pid: int | None = None
    pid_start: int | None = None
    node: str | None = None  # where the process runs or ran (the runner's word for it)
    attempt: int = 0
    progress: dict[str, Any] | None = None
    terminal_seq: int | None = None
    output_bytes: int = 0
    output_truncated: bool = False
    workspace: dict[str, Any] | None = None  # isolation: the effect's git worktree (journaled at start and end)
    owner: str | None = None  # the server that dispatched it (EFFECT_REQUESTED's `owner`; None before sessions)
    output_pruned: bool = False
    cached: bool = False  # resume: a flow step taken from an earlier flow without running
    reused_from: str | None = None  # resume: the effect whose outcome (and output) a cached step carries
    peak_memory_mb: float | None = None  # limits (issue 23): the terminal event's, where the host told it
    spec_text: str | None = field(default=None, repr=False, compare=False)  # `spec` as JSON, made once

    @classmethod
    def requested(cls, event: Event) -> EffectState:
        """The state an EFFECT_REQUESTED event starts."""
        spec = event.data["spec"]
        assert event.effect_id is not None and event.run_id is not None
        return cls(
            effect_id=event.effect_id,
            run_id=event.run_id,
            spec=spec,
            created_at=event.data["created_at"],
            # Pending: it waits for its dependencies, or for its start to be allowed (a flow step's `approval`).
            status="pending" if spec.get("depends_on") or spec.get("start_approval") else "queued",
            command=list(spec["command"]),
            owner=event.data.get("owner"),
        )

    @property
    def terminal(self) -> bool:
        return self.terminal_seq is not None

    def apply(self, event: Event) -> None:
        """The state after `event` (any event of this effect but EFFECT_REQUESTED)."""
        data = event.data
        if event.type == "EFFECT_STARTED":
            self.status = "running"
            self.started_at = data["started_at"]
            self.pid, self.pid_start = data.get("pid"), data.get("pid_start")
            self.node = data.get("node")
            self.command = list(data.get("command", self.spec["command"]))  # absent: the requested argv
            self.attempt = data.get("attempt", 1)
            self.finished_at = self.exit_code = self.signal = self.error = None
        elif event.type == "EFFECT_CANCEL_REQUESTED":
            # Kept on the running effect, so a server that dies during the grace still knows who asked.
            self.cancel_reason, self.cancel_message = data.get("reason"), data.get("message")
        elif event.type == "EFFECT_PROGRESS":
            if "progress" in data:
                self.progress = data["progress"]
            if data.get(QUEUED):
                self.status = "queued"
            if "workspace" in data:
                self.workspace = data["workspace"]
            if RETRY in data:
                retry = data[RETRY]
                self.status, self.pid = "queued", None
                self.error, self.exit_code = retry.get("error"), retry.get("exit_code")
                self.attempt = retry.get("attempt", self.attempt)
        elif event.type == OUTPUT_PRUNED:
            self.output_bytes, self.output_pruned = 0, True
        elif event.type in TERMINAL_EVENTS:
            self.status = TERMINAL_EVENTS[event.type]
            self.finished_at = data["finished_at"]
            self.exit_code, self.signal = data.get("exit_code"), data.get("signal")
            self.error, self.result = data.get("error"), data.get("result")
            self.result_error = data.get("result_error")
            self.cancel_reason, self.cancel_message = data.get("cancel_reason"), data.get("cancel_message")
            self.output_bytes = data.get("output_bytes", self.output_bytes)
            self.output_truncated = bool(data.get("output_truncated", self.output_truncated))
            self.pid = None
            self.terminal_seq = event.seq
            self.attempt = data.get("attempt", self.attempt)
            if data.get("started_at"):
                self.started_at = data["started_at"]
            if "progress" in data:
                self.progress = data["progress"]
            if "workspace" in data:
                self.workspace = data["workspace"]
            if data.get("cached"):
                self.cached, self.reused_from = True, data.get("reused_from")
            if "command" in data:
                self.command = list(data["command"])
            self.peak_memory_mb = data.get("peak_memory_mb")

    def to_row(self) -> dict[str, Any]:
        """The effect's row of the projection table."""
        spec = self.spec
        return {
            "effect_id": self.effect_id,
            "run_id": self.run_id,
            "group_name": spec.get("group"),
            "label": spec.get("label"),
            "key": spec.get("key"),
            "kind": spec["kind"],
            "harness": spec.get("harness"),
            # JSON null when it is the argv requested (the spec's): a fan-out then stores each argv once less
            "command": "null" if self.command == spec["command"] else _dumps(self.command),
            "spec": self._spec_text(),
            "status": self.status,
            "cancel_reason": self.cancel_reason,
            "cancel_message": self.cancel_message,
            "error": self.error,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "result": _dumps(self.result),
            "output_bytes": self.output_bytes,
            "output_truncated": int(self.output_truncated),
            "depends_on": _dumps(spec.get("depends_on") or []),
            "pid": self.pid,
            "pid_start": self.pid_start,
            "attempt": self.attempt,
            "progress": _dumps(self.progress),
            "terminal_seq": self.terminal_seq,
            "flow_id": spec.get("flow_id"),
            "step_id": spec.get("step_id"),
            "workspace": _dumps(self.workspace),
            "owner": self.owner,
            "output_pruned": int(self.output_pruned),
            "result_error": self.result_error,
            "cached": int(self.cached),
            "reused_from": self.reused_from,
            "node": self.node,
            "peak_memory_mb": self.peak_memory_mb,
        }

    def _spec_text(self) -> str:
        if self.spec_text is None:
            self.spec_text = json.dumps(self.spec, separators=(",", ":"))
        return self.spec_text

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> EffectState:
        """The state a projection row holds (the inverse of `to_row`)."""
        spec = json.loads(row["spec"])
        return cls(
            effect_id=row["effect_id"],
            run_id=row["run_id"],
            spec=spec,
            created_at=row["created_at"],
            status=row["status"],
            command=command_of(row["command"], spec),
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            exit_code=row["exit_code"],
            signal=row["signal"],
            error=row["error"],
            result=_loads(row["result"]),
            result_error=row.get("result_error"),  # a journal a reader sees before its server migrated it
            cancel_reason=row["cancel_reason"],
            cancel_message=row["cancel_message"],
            pid=row["pid"],
            pid_start=row["pid_start"],
            node=row["node"] if "node" in row.keys() else None,
            attempt=row["attempt"],
            progress=_loads(row["progress"]),
            terminal_seq=row["terminal_seq"],
            output_bytes=row["output_bytes"],
            output_truncated=bool(row["output_truncated"]),
            workspace=_loads(row.get("workspace")),
            owner=row.get("owner"),
            output_pruned=bool(row.get("output_pruned", 0)),
            cached=bool(row.get("cached")),
            reused_from=row.get("reused_from"),
            peak_memory_mb=row.get("peak_memory_mb"),
            spec_text=row["spec"],
        )


def fold_effect(state: EffectState | None, event: Event) -> EffectState | None:
    """The effect's state after `event`: a new state for EFFECT_REQUESTED, else `state` changed in place."""
    if event.type == "EFFECT_REQUESTED":
        return EffectState.requested(event)
    if state is not None:
        state.apply(event)
    return state


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
            "owner": data.get("owner"),
            "resumed_from": data.get("resumed_from"),
        }
    if row is None:
        return None
    if event.type == "FLOW_COMPLETED":
        return {**row, "status": data["status"], "finished_at": data["finished_at"]}
    return row


def command_of(column: str, spec: dict[str, Any]) -> list[str]:
    """The argv a projection row's `command` column holds: JSON null stands for the spec's own."""
    command = json.loads(column)
    return list(spec["command"]) if command is None else list(command)
