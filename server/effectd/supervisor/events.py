"""The events an effect's life writes, built in one place. `EffectState.apply` is how each one reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from effectd.journal.projection import QUEUED, RETRY, Event, terminal_event
from effectd.model.records import EffectSpec, Terminal, now_iso
from effectd.supervisor.effect import CancelRequest, Effect


@dataclass
class Outcome:
    """How an effect (or one attempt of it) ended, before it is written as a terminal event."""

    status: Terminal
    exit_code: int | None = None
    signal: int | None = None
    error: str | None = None
    result: Any = None
    result_error: str | None = None  # why a result file that was there was not read
    cancel: CancelRequest | None = None
    attempt: int | None = None  # the attempt it ended in, when one began
    workspace: dict[str, Any] | None = None  # isolation: the worktree as it was finished
    reused_from: str | None = None  # resume: a cached flow step, the effect whose outcome it carries
    command: list[str] | None = None  # resume: the argv the effect it was taken from ran (its own ran none)
    peak_memory_mb: float | None = None  # limits (issue 23): its cgroup's peak memory, where the host tells


def requested(effect_id: str, run_id: str, spec: EffectSpec, owner: str | None = None) -> Event:
    """The spec is journaled without the fields that hold their defaults (issue 26: they were most of an
    effect's bytes, twice: here and in `effects.spec`); `EffectSpec.model_validate` gives them back, and the
    journal's own reads (`kind`, `command`, which have none, and `.get` of the rest) need nothing more."""
    data: dict[str, Any] = {"spec": spec.model_dump(mode="json", exclude_defaults=True), "created_at": now_iso()}
    if owner is not None:
        data["owner"] = owner
    return Event("EFFECT_REQUESTED", run_id, effect_id, data)


def started(
    effect: Effect, *, pid: int, pid_start: int | None, command: list[str], attempt: int, node: str | None = None
) -> Event:
    data: dict[str, Any] = {"started_at": now_iso(), "pid": pid, "pid_start": pid_start, "attempt": attempt}
    if command != effect.spec.command:  # the argv as run, when not the one requested (a fan-out item's can be big)
        data["command"] = command
    if node is not None:
        data["node"] = node
    return Event("EFFECT_STARTED", effect.run_id, effect.effect_id, data)


def queued(effect: Effect) -> Event:
    """Its dependencies succeeded: it now waits for a slot."""
    return Event("EFFECT_PROGRESS", effect.run_id, effect.effect_id, {QUEUED: True})


def progress(effect: Effect, value: dict[str, Any]) -> Event:
    return Event("EFFECT_PROGRESS", effect.run_id, effect.effect_id, {"progress": value})


def best_effort(event: Event) -> bool:
    """A progress report: not written when the journal takes no writes (the terminal event carries the last)."""
    return event.type == "EFFECT_PROGRESS" and set(event.data) == {"progress"}


def retry(effect: Effect, outcome: Outcome) -> Event:
    """A failed attempt that will be tried again."""
    attempt = outcome.attempt if outcome.attempt is not None else effect.attempt
    data = {RETRY: {"attempt": attempt, "exit_code": outcome.exit_code, "error": outcome.error}}
    return Event("EFFECT_PROGRESS", effect.run_id, effect.effect_id, data)


def cancel_requested(effect: Effect, cancel: CancelRequest) -> Event:
    data = {"reason": cancel.reason, "message": cancel.message, "grace_s": effect.grace_s}
    return Event("EFFECT_CANCEL_REQUESTED", effect.run_id, effect.effect_id, data)


def ended(effect: Effect, outcome: Outcome) -> Event:
    """The effect's one terminal event."""
    cancel = outcome.cancel or CancelRequest("user", None, None)
    return terminal_event(
        outcome.status,
        effect.run_id,
        effect.effect_id,
        now_iso(),
        exit_code=outcome.exit_code,
        signal=outcome.signal,
        error=outcome.error,
        result=outcome.result,
        result_error=outcome.result_error,
        output_bytes=effect.output.size,
        output_truncated=effect.output.truncated,
        attempt=outcome.attempt if outcome.attempt is not None else effect.attempt,
        cancel_reason=cancel.reason,
        cancel_message=cancel.message,
        progress=effect.progress,
        workspace=outcome.workspace,
        reused_from=outcome.reused_from,
        command=outcome.command,
        peak_memory_mb=outcome.peak_memory_mb,
    )
