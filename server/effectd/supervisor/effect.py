"""One effect as the supervisor holds it: its journaled state, its output, and whoever waits on it.

The state (`EffectState`) changes only through `Effect.apply(event)`, with an event the journal has
already committed: the same fold the projection table and replay use. What is not journaled event by
event is live telemetry, kept beside the state: the output (in its log file), the harness's latest
progress (journaled at most once a second and with the end), and the stall flag.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, cast

import anyio

from effectd.journal.projection import OUTPUT_PRUNED, EffectState, Event
from effectd.model.records import (
    TERMINAL,
    TRANSITIONS,
    CancelReason,
    EffectRecord,
    EffectSpec,
    format_iso,
    seconds_between,
)
from effectd.supervisor.output import OutputLog, monotonic
from effectd.support.flag import Flag


@dataclass(frozen=True)
class CancelRequest:
    reason: CancelReason
    message: str | None
    grace_s: float | None
    skip: str | None = None  # set: an effect that has not started ends `skipped` with this error instead


class Effect:
    """One effect's live state, owned by the supervisor; read by the engine through `record()`."""

    def __init__(self, state: EffectState, spec: EffectSpec, output: OutputLog) -> None:
        self.state = state
        self.spec = spec
        self.output = output
        self.live_progress: dict[str, Any] | None = None  # the parser's latest, ahead of the journal
        self.final_event_seen = False  # the harness printed its final event: its run is over, its result in
        self.cancel: CancelRequest | None = None
        self.cancel_event = Flag()
        self.done = Flag()
        self.changed = Flag()
        self.waiting: anyio.CancelScope | None = None
        self.grace: anyio.CancelScope | None = None  # set while its process group has its grace (SIGTERM sent)
        self.stall_after_s: float | None = None
        self.on_change: Callable[[Effect], None] | None = None
        self.waiting_for: str | None = None  # "approval": its sub-agent waits for an answer (issue 25)
        self.local = False  # driven by this server (else another server's, followed through the journal)
        if state.terminal:
            self.done.set()

    @classmethod
    def from_row(cls, row: dict[str, Any], output: OutputLog) -> Effect:
        """An effect as the journal's projection row has it (an effect of an earlier server, or a reader's)."""
        state = EffectState.from_row(row)
        output.truncated = output.truncated or state.output_truncated
        return cls(state, EffectSpec.model_validate(state.spec), output)

    # --- the journaled state ----------------------------------------------------------------------

    def apply(self, event: Event) -> None:
        """Applies a committed event of this effect (the one way its state changes), then wakes its waiters."""
        self.state.apply(event)
        if event.type == OUTPUT_PRUNED:  # the log is gone: its size and tail with it
            pruned = OutputLog(self.output.path, self.output.limit, closed=True)
            pruned.truncated = self.output.truncated
            self.output = pruned
        if self.state.terminal:
            self.live_progress = None  # the terminal event carries the last progress
            if not self.output.closed:
                self.output.close()
            self.done.set()
        self.notify()

    def check_transition(self, status: str) -> None:
        """Raises when going to `status` is not a move the supervisor may make (a bug, never bad input)."""
        if status != self.status and status not in TRANSITIONS[self.status]:
            raise RuntimeError(f"effect {self.effect_id}: {self.status} -> {status} is not a valid transition")

    @property
    def effect_id(self) -> str:
        return self.state.effect_id

    @property
    def run_id(self) -> str:
        return self.state.run_id

    @property
    def status(self) -> str:
        return self.state.status

    @property
    def terminal(self) -> bool:
        return self.state.status in TERMINAL

    @property
    def terminal_seq(self) -> int | None:
        return self.state.terminal_seq

    @property
    def attempt(self) -> int:
        return self.state.attempt

    @property
    def progress(self) -> dict[str, Any] | None:
        return self.live_progress if self.live_progress is not None else self.state.progress

    @property
    def cancel_reason(self) -> CancelReason | None:
        return cast("CancelReason | None", self.state.cancel_reason)  # the journal holds what CancelRequest wrote

    @property
    def finished_at(self) -> str | None:
        return self.state.finished_at

    @property
    def result(self) -> Any:
        return self.state.result

    @property
    def grace_s(self) -> float:
        """SIGTERM to SIGKILL for this effect: the cancel's own grace if it gave one, else the spec's."""
        if self.cancel is not None and self.cancel.grace_s is not None:
            return self.cancel.grace_s
        return self.spec.grace_s

    # --- reading ----------------------------------------------------------------------------------

    def request_cancel(self, request: CancelRequest) -> bool:
        """Asks the effect's task to stop it; returns False when it is already terminal or being
        cancelled. With `request.skip`, an effect that has not started ends `skipped` with that error. A
        request for an effect already being cancelled can only shorten its grace (see `_shorten_grace`)."""
        if self.terminal:
            return False
        if self.cancel is not None:
            self._shorten_grace(request.grace_s)
            return False
        self.cancel = request
        self.cancel_event.set()
        if self.waiting is not None:
            self.waiting.cancel()
        return True

    def _shorten_grace(self, grace_s: float | None) -> None:
        """A later cancel with a shorter grace brings the SIGKILL forward to at most `grace_s` from now; the
        first cancel's reason stands. Without it a cancel with a long grace (or a race loser's, cancelled
        with its spec's grace) could not be hurried, and the call and the process would wait it out."""
        if self.cancel is None or grace_s is None or grace_s >= self.grace_s:
            return
        self.cancel = replace(self.cancel, grace_s=grace_s)
        if self.grace is not None:
            self.grace.deadline = min(self.grace.deadline, anyio.current_time() + grace_s)

    def record(self) -> EffectRecord:
        state = self.state
        stalled = False
        if state.status == "running" and self.stall_after_s is not None:
            stalled = monotonic() - self.output.last_output > self.stall_after_s
        last_output_at = self.output.last_output_at
        return EffectRecord(
            effect_id=state.effect_id,
            run_id=state.run_id,
            group=self.spec.group,
            label=self.spec.label,
            key=self.spec.key,
            kind=self.spec.kind,
            harness=self.spec.harness,
            command=state.command,
            status=state.status,  # type: ignore[arg-type]
            cancel_reason=state.cancel_reason,  # type: ignore[arg-type]
            cancel_message=state.cancel_message,
            error=state.error,
            exit_code=state.exit_code,
            signal=state.signal,
            created_at=state.created_at,
            started_at=state.started_at,
            finished_at=state.finished_at,
            duration_s=seconds_between(state.started_at, state.finished_at),
            result=state.result,
            result_error=state.result_error,
            output_tail=self.output.tail(),
            output_bytes=self.output.size,
            output_truncated=self.output.truncated,
            output_pruned=state.output_pruned,
            depends_on=list(self.spec.depends_on),
            pid=state.pid if state.status == "running" else None,
            attempt=state.attempt,
            max_attempts=self.spec.max_attempts,
            progress=self.progress,
            stalled=stalled,
            last_output_at=format_iso(datetime.fromtimestamp(last_output_at, UTC)) if last_output_at else None,
            flow_id=self.spec.flow_id,
            step_id=self.spec.step_id,
            workspace=state.workspace,
            owner=state.owner or "",
            cached=state.cached,
            reused_from=state.reused_from,
            node=state.node,
            sandbox=self.spec.sandbox,
            limits=self.spec.limits,
            peak_memory_mb=state.peak_memory_mb,
            approvals=self.spec.approvals,
            waiting_for=self.waiting_for if not state.terminal else None,  # type: ignore[arg-type]
        )

    async def read_output(self, cursor: int, max_bytes: int, wait_s: float = 0.0) -> tuple[str, int, bool]:
        """Output from byte `cursor` (waiting up to `wait_s` for some while the effect may still print):
        the text, the cursor after it, and whether that was the end of a finished effect's output."""
        if wait_s > 0 and cursor >= self.output.size and not self.terminal:
            await self.output.wait_beyond(cursor, wait_s)
        data, after = self.output.read(cursor, max_bytes)
        return data, after, self.terminal and after >= self.output.size

    def notify(self) -> None:
        """Wakes whoever waits on this effect (status, output or progress changed)."""
        self.changed.set()
        self.changed = Flag()
        if self.on_change is not None:
            self.on_change(self)
