"""The supervisor: every effect's life from request to its one terminal event.

Every change of state goes through here: it is committed to the journal first, then applied in
memory, then whoever waits on the effect (a foreground dispatch, `await_group`, `stream_effect`,
`cancel_effect`) is woken. One task per effect, all in the supervisor's task group, drives the
effect through pending -> queued -> running -> terminal; only that task ends the effect, so an
effect gets exactly one terminal event.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from effectd.errors import ConflictError, InvalidRequestError, UnknownEffectError
from effectd.feed import ChangeFeed
from effectd.harness import Parser, make_parser
from effectd.journal import TERMINAL_EVENTS, Event, Journal, terminal_event
from effectd.models import (
    TERMINAL,
    TRANSITIONS,
    EffectRecord,
    EffectSpec,
    format_iso,
    new_id,
    now_iso,
    seconds_between,
)
from effectd.output import LineSplitter, OutputLog
from effectd.runner import (
    ExitStatus,
    Launch,
    LocalRunner,
    ProcessHandle,
    Runner,
    SpawnError,
    effect_processes,
    process_start_time,
)

log = logging.getLogger("effectd")

_PROGRESS_EVENT_EVERY_S = 1.0
_DRAIN_AFTER_EXIT_S = 1.0
_GROUP_GONE_BOUND_S = 3.0
_MAX_LINE_BYTES = 16 * 1024 * 1024
_KEEP_FINISHED = 4096  # finished effects kept in memory; older ones are read back from the journal


@dataclass(frozen=True)
class CancelRequest:
    reason: str
    message: str | None
    grace_s: float | None
    skip: str | None = None  # set: an effect that has not started ends `skipped` with this error instead


@dataclass
class Outcome:
    """How one attempt ended, before it is written as a terminal event."""

    status: str
    exit_code: int | None = None
    signal: int | None = None
    error: str | None = None
    result: Any = None
    cancel: CancelRequest | None = None


def _check_run_id(run_id: str) -> None:
    if not run_id or "\0" in run_id or len(run_id) > 256:
        raise InvalidRequestError("a run_id is 1 to 256 characters without NUL")


class Effect:
    """One effect's live state, owned by the supervisor; read by the tools through `record()`."""

    def __init__(self, effect_id: str, run_id: str, spec: EffectSpec, created_at: str, output: OutputLog) -> None:
        self.effect_id = effect_id
        self.run_id = run_id
        self.spec = spec
        self.created_at = created_at
        self.output = output
        self.status = "pending" if spec.depends_on else "queued"
        self.command: list[str] = list(spec.command)
        self.started_at: str | None = None
        self.finished_at: str | None = None
        self.exit_code: int | None = None
        self.signal: int | None = None
        self.error: str | None = None
        self.result: Any = None
        self.cancel_reason: str | None = None
        self.cancel_message: str | None = None
        self.pid: int | None = None
        self.attempt = 0
        self.progress: dict[str, Any] | None = None
        self.terminal_seq: int | None = None
        self.cancel: CancelRequest | None = None
        self.cancel_event = anyio.Event()
        self.done = anyio.Event()
        self.changed = anyio.Event()
        self.waiting: anyio.CancelScope | None = None
        self.stall_after_s: float | None = None
        self.on_change: Callable[[Effect], None] | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any], output: OutputLog) -> Effect:
        spec = EffectSpec.model_validate_json(row["spec"])
        effect = cls(row["effect_id"], row["run_id"], spec, row["created_at"], output)
        effect.status = row["status"]
        effect.command = json.loads(row["command"])
        for name in ("started_at", "finished_at", "exit_code", "signal", "error", "cancel_reason", "cancel_message"):
            setattr(effect, name, row[name])
        effect.result = json.loads(row["result"]) if row["result"] is not None else None
        effect.progress = json.loads(row["progress"]) if row["progress"] is not None else None
        effect.attempt = row["attempt"]
        effect.terminal_seq = row["terminal_seq"]
        effect.pid = row["pid"]
        output.truncated = bool(row["output_truncated"])
        if effect.status in TERMINAL:
            effect.done.set()
        return effect

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def grace_s(self) -> float:
        """SIGTERM to SIGKILL for this effect: the cancel's own grace if it gave one, else the spec's."""
        if self.cancel is not None and self.cancel.grace_s is not None:
            return self.cancel.grace_s
        return self.spec.grace_s

    def record(self) -> EffectRecord:
        stalled = False
        if self.status == "running" and self.stall_after_s is not None:
            stalled = time.monotonic() - self.output.last_output > self.stall_after_s
        return EffectRecord(
            effect_id=self.effect_id,
            run_id=self.run_id,
            group=self.spec.group,
            label=self.spec.label,
            key=self.spec.key,
            kind=self.spec.kind,
            harness=self.spec.harness,
            command=self.command,
            status=self.status,  # type: ignore[arg-type]
            cancel_reason=self.cancel_reason,  # type: ignore[arg-type]
            cancel_message=self.cancel_message,
            error=self.error,
            exit_code=self.exit_code,
            signal=self.signal,
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            duration_s=seconds_between(self.started_at, self.finished_at),
            result=self.result,
            output_tail=self.output.tail(),
            output_bytes=self.output.size,
            output_truncated=self.output.truncated,
            depends_on=list(self.spec.depends_on),
            pid=self.pid if self.status == "running" else None,
            attempt=self.attempt,
            max_attempts=self.spec.max_attempts,
            progress=self.progress,
            stalled=stalled,
            last_output_at=format_iso(datetime.fromtimestamp(self.output.last_output_at, UTC))
            if self.output.last_output_at is not None
            else None,
            flow_id=self.spec.flow_id,
            step_id=self.spec.step_id,
        )

    async def read_output(self, cursor: int, max_bytes: int, wait_s: float = 0.0) -> tuple[str, int, bool]:
        """Output from byte `cursor` (waiting up to `wait_s` for some while the effect may still print):
        the text, the cursor after it, and whether that was the end of a finished effect's output."""
        if wait_s > 0 and cursor >= self.output.size and not self.terminal:
            await self.output.wait_beyond(cursor, wait_s)
        data, after = self.output.read(cursor, max_bytes)
        return data, after, self.terminal and after >= self.output.size

    def _set_status(self, status: str) -> None:
        if status != self.status and status not in TRANSITIONS[self.status]:
            raise RuntimeError(f"effect {self.effect_id}: {self.status} -> {status} is not a valid transition")
        self.status = status

    def notify(self) -> None:
        """Wakes whoever waits on this effect (status, output or progress changed)."""
        self.changed.set()
        self.changed = anyio.Event()
        if self.on_change is not None:
            self.on_change(self)


class Supervisor:
    """Schedules, runs, cancels and recovers effects; the engine every tool talks to."""

    def __init__(
        self,
        journal: Journal,
        *,
        output_dir: Path,
        max_concurrency: int = 16,
        default_grace_s: float = 5.0,
        output_limit_bytes: int = 64 * 1024 * 1024,
        stall_after_s: float | None = 60.0,
        result_grace_s: float = 2.0,
        harness_limits: dict[str, int] | None = None,
        runner: Runner | None = None,
        keep_queued: bool = False,
        base_env: dict[str, str] | None = None,
        feed: ChangeFeed | None = None,
    ) -> None:
        self.journal = journal
        self.feed = feed or ChangeFeed()
        self.output_dir = output_dir
        self.default_grace_s = default_grace_s
        self.output_limit_bytes = output_limit_bytes
        self.stall_after_s = stall_after_s
        self.result_grace_s = result_grace_s
        self.keep_queued = keep_queued
        self.runner = runner or LocalRunner()
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.default_run_id = new_id("run_")
        self._slots = anyio.CapacityLimiter(max_concurrency)
        self._harness_limits = {name: anyio.CapacityLimiter(n) for name, n in (harness_limits or {}).items()}
        self._group_limits: dict[str, anyio.CapacityLimiter] = {}
        self._effects: dict[str, Effect] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._known_runs: set[str] = set()
        self._run_lock = anyio.Lock()
        self._key_locks: dict[tuple[str, str], anyio.Lock] = {}
        self._completed = anyio.Event()
        self._tg: TaskGroup | None = None
        self._closing = False
        self._active_tasks = 0
        self._idle = anyio.Event()
        self._idle.set()
        self.render: Callable[[Effect], Awaitable[tuple[list[str], str | None]]] | None = None
        self.on_terminal: list[Callable[[Effect], None]] = []

    # --- lifecycle -------------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Supervisor]:
        """Recovers what the last server left, runs effects until the context ends, then shuts down."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            await self._recover()
            try:
                yield self
            finally:
                with anyio.CancelScope(shield=True):
                    await self.shutdown()
                tg.cancel_scope.cancel()

    async def shutdown(self) -> None:
        """Cancels running effects (reason `shutdown`) and, unless keep_queued, the waiting ones; waits for them."""
        self._closing = True
        graces = [0.0]
        for effect in list(self._effects.values()):
            if effect.terminal:
                continue
            if effect.status == "running" or not self.keep_queued:
                self.request_cancel(effect, "shutdown")
                graces.append(effect.grace_s)  # an earlier cancel's own grace, if one is under way
            elif effect.waiting is not None:
                effect.waiting.cancel()  # left pending or queued in the journal: the next start runs it
        with anyio.move_on_after(max(graces) + 1.5):
            await self._idle.wait()

    def _spawn_driver(self, effect: Effect) -> None:
        assert self._tg is not None, "the supervisor is not running"
        self._active_tasks += 1
        self._idle = anyio.Event() if self._idle.is_set() else self._idle
        self._tg.start_soon(self._drive, effect, name=f"effect {effect.effect_id}")

    # --- lookups ---------------------------------------------------------------------------------

    def _log_path(self, effect_id: str) -> Path:
        return self.output_dir / f"{effect_id}.log"

    def result_path(self, effect_id: str) -> Path:
        return self.output_dir / f"{effect_id}.result.json"

    async def get(self, effect_id: str) -> Effect:
        """The effect with this id, from memory or the journal; UnknownEffectError names an unknown id."""
        return (await self.get_many([effect_id]))[0]

    async def get_many(self, effect_ids: Sequence[str]) -> list[Effect]:
        """The effects with these ids, in order; those not in memory are read from the journal together."""
        found = {i: self._effects[i] for i in effect_ids if i in self._effects}
        missing = [i for i in dict.fromkeys(effect_ids) if i not in found]
        if missing:
            rows = await self.journal.effects(missing)
            unknown = [i for i in missing if i not in rows]
            if len(unknown) == 1 and len(effect_ids) == 1:
                raise UnknownEffectError(f"unknown effect id {unknown[0]!r}: no effect with this id in the journal")
            if unknown:
                raise UnknownEffectError(f"unknown effect ids: {', '.join(unknown)}")
            for effect_id, row in rows.items():
                effect = self._effects.get(effect_id)  # loaded by someone else meanwhile?
                if effect is None:
                    log_ = OutputLog.existing(self._log_path(effect_id), self.output_limit_bytes)
                    effect = self._effects[effect_id] = self._adopt(Effect.from_row(row, log_))
                    if effect.terminal:
                        self._remember_finished(effect)  # may drop older ones: `found` keeps these
                found[effect_id] = effect
        return [found[i] for i in effect_ids]

    async def records(self, rows: Iterable[dict[str, Any]]) -> list[EffectRecord]:
        """Records for projection rows, live state taking precedence over the stored row."""
        records = []
        for row in rows:
            effect = self._effects.get(row["effect_id"])
            if effect is None:
                log_ = OutputLog.existing(self._log_path(row["effect_id"]), self.output_limit_bytes)
                effect = Effect.from_row(row, log_)
            records.append(effect.record())
        return records

    # --- dispatch --------------------------------------------------------------------------------

    async def dispatch(self, spec: EffectSpec, run_id: str | None = None) -> tuple[Effect, bool]:
        """Journals a new effect and schedules it; returns it and whether it is new (False: same key)."""
        run_id = run_id or self.default_run_id
        self._refuse_when_closing()
        _check_run_id(run_id)
        if spec.key is None:
            return await self._dispatch(spec, run_id), True
        async with self._holding_keys(run_id, [spec.key]):
            row = await self.journal.by_key(run_id, spec.key)
            if row is not None:
                existing = await self.get(row["effect_id"])
                if existing.spec.identity() != spec.identity():
                    raise ConflictError(
                        f"key {spec.key!r} of run {run_id!r} already names effect {existing.effect_id} with "
                        "other arguments; use a new key, or the same arguments to get that effect back"
                    )
                return existing, False
            return await self._dispatch(spec, run_id), True

    @asynccontextmanager
    async def _holding_keys(self, run_id: str, keys: Sequence[str]) -> AsyncIterator[None]:
        """Holds the idempotency keys of a run (in one order, so two holders cannot deadlock) while a
        dispatch checks and journals them: a key names at most one effect."""
        names = sorted(set(keys))
        locks = [self._key_locks.setdefault((run_id, key), anyio.Lock()) for key in names]
        try:
            async with AsyncExitStack() as stack:
                for lock in locks:
                    await stack.enter_async_context(lock)
                yield
        finally:
            for key, lock in zip(names, locks, strict=True):
                if not lock.locked() and lock.statistics().tasks_waiting == 0:
                    self._key_locks.pop((run_id, key), None)

    async def _append_claiming_run(self, run_id: str, events: list[Event]) -> list[Event]:
        """Appends events; a RUN_CREATED among them that fails to commit is unclaimed again."""
        try:
            return await self.journal.append(*events)
        except BaseException:
            if events and events[0].type == "RUN_CREATED":
                self._known_runs.discard(run_id)
            raise

    def _apply_group_limit(self, spec: EffectSpec) -> None:
        if spec.group is not None and spec.group_max_concurrency is not None:
            self.limit_group(spec.group, spec.group_max_concurrency)

    @property
    def closing(self) -> bool:
        """True once shutdown began: no new effects are taken."""
        return self._closing

    def _refuse_when_closing(self) -> None:
        if self._closing:
            raise InvalidRequestError("the server is shutting down and takes no new effects")

    async def dispatch_many(
        self, specs: Sequence[tuple[str, EffectSpec]], run_id: str | None, extra: Sequence[Event] = ()
    ) -> list[Effect]:
        """Journals several effects with ids chosen by the caller (and `extra` events) in one commit,
        then schedules them. Used by flows, whose steps name each other's ids in `depends_on`."""
        self._refuse_when_closing()
        run_id = run_id or self.default_run_id
        _check_run_id(run_id)
        keyed = [spec for _, spec in specs if spec.key is not None]
        async with self._holding_keys(run_id, [spec.key for spec in keyed if spec.key is not None]):
            for spec in keyed:
                assert spec.key is not None
                row = await self.journal.by_key(run_id, spec.key)
                if row is not None:
                    step = f"step {spec.step_id!r}: " if spec.step_id else ""
                    raise ConflictError(
                        f"{step}key {spec.key!r} already names effect {row['effect_id']} of run {run_id!r}; "
                        "give every new effect a key not used before in the run"
                    )
            effects = [self._new_effect(spec, run_id, effect_id) for effect_id, spec in specs]
            events = await self._run_events(run_id)
            events.extend(extra)
            events.extend(self._requested(e) for e in effects)
            await self._append_claiming_run(run_id, events)
        for effect in effects:
            self._apply_group_limit(effect.spec)
            self._effects[effect.effect_id] = effect
            self._spawn_driver(effect)
        return effects

    def _new_effect(self, spec: EffectSpec, run_id: str, effect_id: str | None = None) -> Effect:
        effect_id = effect_id or new_id("eff_")
        output = OutputLog(self._log_path(effect_id), self.output_limit_bytes)
        return self._adopt(Effect(effect_id, run_id, spec, now_iso(), output))

    def _adopt(self, effect: Effect) -> Effect:
        effect.stall_after_s = self.stall_after_s
        effect.on_change = self._changed
        return effect

    def _changed(self, effect: Effect) -> None:
        self.feed.publish(effect.effect_id)

    def _requested(self, effect: Effect) -> Event:
        return Event(
            "EFFECT_REQUESTED",
            effect.run_id,
            effect.effect_id,
            {"spec": effect.spec.model_dump(mode="json"), "created_at": effect.created_at},
        )

    async def _run_events(self, run_id: str) -> list[Event]:
        if run_id in self._known_runs:
            return []
        async with self._run_lock:
            if run_id in self._known_runs or await self.journal.run_exists(run_id):
                self._known_runs.add(run_id)
                return []
            self._known_runs.add(run_id)  # claimed now, written with the first effect's events
            return [Event("RUN_CREATED", run_id, None, {"created_at": now_iso()})]

    async def _dispatch(self, spec: EffectSpec, run_id: str) -> Effect:
        dependencies = await self.get_many(spec.depends_on) if spec.depends_on else []
        effect = self._new_effect(spec, run_id)
        events = await self._run_events(run_id)
        events.append(self._requested(effect))
        blocked = next((d for d in dependencies if d.terminal and d.status != "succeeded"), None)
        if blocked is not None:
            events.append(self._skip_event(effect, blocked))
        stamped = await self._append_claiming_run(run_id, events)
        self._apply_group_limit(spec)
        self._effects[effect.effect_id] = effect
        if blocked is not None:
            self._apply_terminal(effect, stamped[-1])
        else:
            self._spawn_driver(effect)
        return effect

    # --- cancellation ----------------------------------------------------------------------------

    def request_cancel(
        self,
        effect: Effect,
        reason: str,
        message: str | None = None,
        grace_s: float | None = None,
        *,
        skip: str | None = None,
    ) -> bool:
        """Asks the effect's task to stop it; returns False when it is already terminal or being cancelled.
        With `skip`, an effect that has not started ends `skipped` with that error instead.

        Synchronous, so it can run while a cancelled caller unwinds.
        """
        if effect.terminal or effect.cancel is not None:
            return False
        effect.cancel = CancelRequest(reason, message, grace_s, skip)
        effect.cancel_event.set()
        if effect.waiting is not None:
            effect.waiting.cancel()
        return True

    async def cancel(
        self,
        effect: Effect,
        reason: str = "user",
        message: str | None = None,
        grace_s: float | None = None,
        within_s: float | None = None,
    ) -> Effect:
        """Cancels the effect and returns once it is terminal (its process group gone), or after
        `within_s` with the kill still under way (a grace longer than a tool call may last)."""
        self.request_cancel(effect, reason, message, grace_s)
        bound = effect.grace_s + _GROUP_GONE_BOUND_S + _DRAIN_AFTER_EXIT_S + 5
        with anyio.move_on_after(bound if within_s is None else min(bound, within_s)):
            await effect.done.wait()
        return effect

    async def cancel_many(
        self, effects: Sequence[Effect], reason: str, message: str | None, within_s: float | None = None
    ) -> list[Effect]:
        """Cancels every effect of `effects` not yet finished, all at once, and waits for them (at most
        `within_s`); returns those that were not finished."""
        targets = [e for e in dict.fromkeys(effects) if not e.terminal]
        for effect in targets:
            self.request_cancel(effect, reason, message)
        async with anyio.create_task_group() as tg:
            for effect in targets:
                tg.start_soon(partial(self.cancel, effect, reason, message, within_s=within_s))
        return targets

    def request_skip(self, effect: Effect, why: str, reason: str) -> bool:
        """Ends an effect as `skipped` (error `why`) if it has not started, else cancels it with `reason`."""
        return self.request_cancel(effect, reason, skip=why)

    @contextmanager
    def _interruptible(self, effect: Effect) -> Iterator[anyio.CancelScope]:
        """A scope for an effect's waits (dependencies, slots, backoff) that a cancel request or a
        shutdown ends, including one that came before the wait began."""
        with anyio.CancelScope() as scope:
            effect.waiting = scope
            if effect.cancel is not None or self._closing:
                scope.cancel()
            try:
                yield scope
            finally:
                effect.waiting = None

    # --- waiting ---------------------------------------------------------------------------------

    async def wait_done(self, effect: Effect, within_s: float) -> bool:
        with anyio.move_on_after(within_s):
            await effect.done.wait()
        return effect.terminal

    async def wait_completions(
        self, effects: Sequence[Effect], mode: str, cursor: int, within_s: float
    ) -> tuple[list[Effect], bool]:
        """Waits until all `effects` are terminal (`all`) or one finished after `cursor` (`any`).

        Returns the effects that finished after `cursor`, in finishing order, and whether it timed out.
        """

        def finished_after() -> list[Effect]:
            done = [e for e in effects if e.terminal and (e.terminal_seq or 0) > cursor]
            return sorted(done, key=lambda e: e.terminal_seq or 0)

        def satisfied() -> bool:
            if mode == "all":
                return all(e.terminal for e in effects)
            return bool(finished_after()) or all(e.terminal for e in effects)

        timed_out = False
        with anyio.move_on_after(within_s) as scope:
            while not satisfied():
                await self._completed.wait()
        if scope.cancelled_caught and not satisfied():
            timed_out = True
        return finished_after(), timed_out

    # --- one effect's life -----------------------------------------------------------------------

    async def _drive(self, effect: Effect) -> None:
        try:
            await self._drive_inner(effect)
        except Exception:
            log.exception("effect %s: the supervisor failed", effect.effect_id)
            if not effect.terminal:
                with anyio.CancelScope(shield=True):
                    await self._finish(effect, Outcome("failed", error="internal error in effectd (see its log)"))
        finally:
            self._active_tasks -= 1
            if self._active_tasks == 0:
                self._idle.set()

    async def _drive_inner(self, effect: Effect) -> None:
        if effect.spec.depends_on and effect.status == "pending":
            blocked = await self._wait_dependencies(effect)
            if effect.cancel is not None:
                return await self._finish_cancelled_waiting(effect)
            if self._detached(effect):
                return
            if blocked is not None:
                stamped = await self.journal.append(self._skip_event(effect, blocked))
                return self._apply_terminal(effect, stamped[0])
            effect._set_status("queued")
            effect.notify()
        while not await self._attempt(effect):
            if effect.spec.retry_backoff_s > 0:
                with self._interruptible(effect):
                    await anyio.sleep(effect.spec.retry_backoff_s * 2 ** (effect.attempt - 1))
                if effect.cancel is not None:
                    return await self._finish_cancelled_waiting(effect)

    def _detached(self, effect: Effect) -> bool:
        return self._closing and self.keep_queued and effect.cancel is None

    async def _wait_dependencies(self, effect: Effect) -> Effect | None:
        """Waits for every dependency to end; returns the first that did not succeed, if any."""
        dependencies = await self.get_many(effect.spec.depends_on)

        def blocked() -> Effect | None:
            return next((d for d in dependencies if d.terminal and d.status != "succeeded"), None)

        async def until_done(dependency: Effect, scope: anyio.CancelScope) -> None:
            await dependency.done.wait()
            if dependency.status != "succeeded":
                scope.cancel()  # any dependency that fails ends the wait at once, even while others run

        with self._interruptible(effect):
            async with anyio.create_task_group() as tg:
                for dependency in dependencies:
                    if not dependency.terminal:
                        tg.start_soon(until_done, dependency, tg.cancel_scope)
                if blocked() is not None:
                    tg.cancel_scope.cancel()
        return blocked()

    def _limiters(self, effect: Effect) -> list[anyio.CapacityLimiter]:
        limiters = []
        if effect.spec.group and effect.spec.group in self._group_limits:
            limiters.append(self._group_limits[effect.spec.group])
        if effect.spec.harness and effect.spec.harness in self._harness_limits:
            limiters.append(self._harness_limits[effect.spec.harness])
        limiters.append(self._slots)
        return limiters

    def limit_group(self, group: str, max_concurrency: int) -> None:
        """Caps how many effects of `group` run at once (set by the first dispatch that names it)."""
        self._group_limits.setdefault(group, anyio.CapacityLimiter(max_concurrency))

    async def _attempt(self, effect: Effect) -> bool:
        """Waits for a slot and runs the process once; True when the effect is done with (terminal or
        left for the next server), False when it failed and will be tried again.

        The terminal event is written while the slot is still held, so the journal never shows
        more effects running at once than the limits allow.
        """
        held: list[anyio.CapacityLimiter] = []
        try:
            with self._interruptible(effect):
                for limiter in self._limiters(effect):
                    await limiter.acquire_on_behalf_of(effect)
                    held.append(limiter)
            if self._closing and effect.cancel is None:
                if self.keep_queued:
                    return True
                self.request_cancel(effect, "shutdown")
            if effect.cancel is not None:
                await self._finish(effect, self._cancelled_outcome(effect))
                return True
            outcome = await self._run_process(effect)
            retry = (
                outcome.status == "failed"
                and effect.attempt < effect.spec.max_attempts
                and effect.cancel is None
                and not self._closing
            )
            if retry:
                await self._journal_retry(effect, outcome)
                return False
            await self._finish(effect, outcome)
            return True
        finally:
            for limiter in reversed(held):
                limiter.release_on_behalf_of(effect)

    def _cancelled_outcome(self, effect: Effect) -> Outcome:
        if effect.cancel is not None and effect.cancel.skip is not None:
            return Outcome("skipped", error=effect.cancel.skip)
        return Outcome("cancelled", cancel=effect.cancel)

    async def _finish_cancelled_waiting(self, effect: Effect) -> None:
        await self._finish(effect, self._cancelled_outcome(effect))

    async def _launch(self, effect: Effect) -> Launch:
        argv, stdin = list(effect.spec.command), effect.spec.stdin
        if effect.spec.templated and self.render is not None:
            argv, stdin = await self.render(effect)
        if effect.spec.kind == "harness" and effect.spec.prompt_via == "stdin":
            stdin = effect.spec.prompt if stdin is None else stdin
        env = {**self.base_env, **effect.spec.env}
        env.update(
            EFFECTD_EFFECT_ID=effect.effect_id,
            EFFECTD_RUN_ID=effect.run_id,
            EFFECTD_RESULT_FILE=str(self.result_path(effect.effect_id)),
        )
        return Launch(argv, env, effect.spec.cwd, stdin.encode() if stdin is not None else None)

    async def _run_process(self, effect: Effect) -> Outcome:
        effect.attempt += 1
        with suppress(FileNotFoundError):
            self.result_path(effect.effect_id).unlink()
        try:
            launch = await self._launch(effect)
        except Exception as exc:  # a template that cannot be filled
            return Outcome("failed", error=str(exc))
        effect.command = list(launch.argv)
        effect.output.reopen()
        try:
            handle = await self.runner.start(launch)
        except SpawnError as exc:
            return Outcome("failed", error=str(exc))
        try:
            started_at = now_iso()
            await self.journal.append(
                Event(
                    "EFFECT_STARTED",
                    effect.run_id,
                    effect.effect_id,
                    {
                        "started_at": started_at,
                        "pid": handle.pid,
                        "pid_start": handle.start_marker,
                        "command": effect.command,
                        "attempt": effect.attempt,
                    },
                )
            )
            effect._set_status("running")
            effect.started_at, effect.pid = started_at, handle.pid
            effect.finished_at = effect.exit_code = effect.signal = effect.error = None
            effect.output.last_output = time.monotonic()
            effect.notify()
            return await self._watch(effect, handle)
        finally:
            with anyio.CancelScope(shield=True):
                await self._reap(effect, handle)
                handle.close()

    async def _watch(self, effect: Effect, handle: ProcessHandle) -> Outcome:
        spec = effect.spec
        parser = make_parser(spec.parser) if spec.parser else None
        exited: ExitStatus | None = None
        stop = anyio.Event()
        parser_done = anyio.Event()
        output_done = anyio.Event()

        async def on_exit() -> None:
            nonlocal exited
            exited = await handle.wait()
            stop.set()

        async def on_cancel() -> None:
            await effect.cancel_event.wait()
            stop.set()
            cancel = effect.cancel
            if cancel is not None and exited is None:  # journaled, so a crash during the grace keeps the why
                data = {"reason": cancel.reason, "message": cancel.message, "grace_s": effect.grace_s}
                await self.journal.append(Event("EFFECT_CANCEL_REQUESTED", effect.run_id, effect.effect_id, data))

        async def on_timeout(seconds: float) -> None:
            await anyio.sleep(seconds)
            self.request_cancel(effect, "timeout")

        async def on_idle(seconds: float) -> None:
            while True:
                quiet = time.monotonic() - effect.output.last_output
                if quiet >= seconds:
                    self.request_cancel(effect, "idle_timeout")
                    return
                await anyio.sleep(seconds - quiet)

        async def on_result() -> None:
            await parser_done.wait()
            await anyio.sleep(self.result_grace_s)
            stop.set()  # the harness printed its final event but did not exit: reap it, keep its result

        async with anyio.create_task_group() as tg:
            tg.start_soon(self._pump, effect, handle, parser, parser_done, output_done)
            tg.start_soon(on_exit)
            tg.start_soon(on_cancel)
            if spec.timeout_s is not None:
                tg.start_soon(on_timeout, spec.timeout_s)
            if spec.idle_timeout_s is not None:
                tg.start_soon(on_idle, spec.idle_timeout_s)
            if parser is not None:
                tg.start_soon(on_result)
            await stop.wait()
            cancelled = False
            status = exited
            if status is None:
                status = await self._terminate(handle, effect.grace_s)
                cancelled = effect.cancel is not None
            elif not await handle.wait_group_gone(0):
                # Leftovers of the group (a daemonised grandchild) do not outlive the effect.
                await self._terminate(handle, effect.grace_s)
            with anyio.move_on_after(_DRAIN_AFTER_EXIT_S):
                await output_done.wait()
            tg.cancel_scope.cancel()
            outcome = self._outcome(effect, status, cancelled, parser)
        return outcome

    async def _terminate(self, handle: ProcessHandle, grace: float) -> ExitStatus:
        """SIGTERM to the whole group, SIGKILL to what is left of it after `grace`; returns the leader's
        exit status. The grace is for the group, not only the leader: a grandchild that ignores
        SIGTERM is killed when the grace ends, not a second grace later."""
        handle.signal_group(signal.SIGTERM)
        if not await handle.wait_group_gone(grace):
            handle.signal_group(signal.SIGKILL)
            await handle.wait_group_gone(_GROUP_GONE_BOUND_S)
        with anyio.move_on_after(_GROUP_GONE_BOUND_S):
            return await handle.wait()
        return ExitStatus(None, signal.SIGKILL)

    async def _reap(self, effect: Effect, handle: ProcessHandle) -> None:
        """Makes sure nothing of the effect's process group is left, whatever happened above."""
        if not await handle.wait_group_gone(0):
            handle.signal_group(signal.SIGKILL)
            if not await handle.wait_group_gone(_GROUP_GONE_BOUND_S):
                log.warning("effect %s: processes of group %s still alive after SIGKILL", effect.effect_id, handle.pid)

    async def _pump(
        self,
        effect: Effect,
        handle: ProcessHandle,
        parser: Parser | None,
        parser_done: anyio.Event,
        output_done: anyio.Event,
    ) -> None:
        lines_of = LineSplitter(_MAX_LINE_BYTES)
        last_event = 0.0
        try:
            while chunk := await handle.read():
                effect.output.write(chunk)
                if parser is None:
                    effect.notify()
                    continue
                changed = False
                for line in lines_of.feed(chunk):
                    changed = parser.feed(line.decode("utf-8", "replace")) or changed
                if changed:
                    effect.progress = parser.progress.to_json()
                    now = time.monotonic()
                    if now - last_event >= _PROGRESS_EVENT_EVERY_S:
                        last_event = now
                        await self.journal.append(
                            Event("EFFECT_PROGRESS", effect.run_id, effect.effect_id, {"progress": effect.progress})
                        )
                if parser.finished:
                    parser_done.set()
                effect.notify()
            if parser is not None and (rest := lines_of.rest()):
                parser.feed(rest.decode("utf-8", "replace"))
                effect.progress = parser.progress.to_json()
        finally:
            output_done.set()

    def _outcome(self, effect: Effect, exited: ExitStatus, cancelled: bool, parser: Parser | None) -> Outcome:
        if cancelled:
            return Outcome("cancelled", exited.exit_code, exited.signal, cancel=effect.cancel)
        result = self._read_result(effect)
        if parser is not None:
            harness = parser.outcome(exited.exit_code)
            if harness.result is not None:
                result = harness.result if result is None else {**harness.result, "file": result}
            if harness.error is not None:
                return Outcome("failed", exited.exit_code, exited.signal, error=harness.error, result=result)
            if parser.finished:
                return Outcome("succeeded", exited.exit_code, exited.signal, result=result)
        if exited.signal is not None:
            error = f"killed by signal {exited.signal}"
            with suppress(ValueError):
                error += f" ({signal.Signals(exited.signal).name})"
            return Outcome("failed", None, exited.signal, error=error, result=result)
        if exited.exit_code == 0:
            return Outcome("succeeded", 0, result=result)
        return Outcome("failed", exited.exit_code, error=f"exited with code {exited.exit_code}", result=result)

    def _read_result(self, effect: Effect) -> Any:
        path = self.result_path(effect.effect_id)
        try:
            text = path.read_text(encoding="utf-8")
        except (FileNotFoundError, UnicodeDecodeError):
            return None
        try:
            return json.loads(text) if text.strip() else None
        except json.JSONDecodeError:
            log.warning("effect %s: result file is not valid JSON; ignored", effect.effect_id)
            return None

    # --- terminal events -------------------------------------------------------------------------

    def _skip_event(self, effect: Effect, blocked: Effect) -> Event:
        return Event(
            "EFFECT_SKIPPED",
            effect.run_id,
            effect.effect_id,
            {"finished_at": now_iso(), "error": f"dependency {blocked.effect_id} {blocked.status}"},
        )

    async def _journal_retry(self, effect: Effect, outcome: Outcome) -> None:
        retry = {"attempt": effect.attempt, "exit_code": outcome.exit_code, "error": outcome.error}
        await self.journal.append(Event("EFFECT_PROGRESS", effect.run_id, effect.effect_id, {"retry": retry}))
        effect._set_status("queued")
        effect.pid = None
        effect.error, effect.exit_code = outcome.error, outcome.exit_code
        effect.notify()

    async def _finish(self, effect: Effect, outcome: Outcome) -> None:
        if effect.terminal:
            return
        cancel = outcome.cancel or CancelRequest("user", None, None)
        event = terminal_event(
            outcome.status,
            effect.run_id,
            effect.effect_id,
            now_iso(),
            exit_code=outcome.exit_code,
            signal=outcome.signal,
            error=outcome.error,
            result=outcome.result,
            output_bytes=effect.output.size,
            output_truncated=effect.output.truncated,
            attempt=effect.attempt,
            cancel_reason=cancel.reason,
            cancel_message=cancel.message,
            progress=effect.progress,
        )
        with anyio.CancelScope(shield=True):
            stamped = await self.journal.append(event)
        self._apply_terminal(effect, stamped[0])

    def _apply_terminal(self, effect: Effect, event: Event) -> None:
        data = event.data
        effect._set_status(TERMINAL_EVENTS[event.type])
        effect.finished_at = data["finished_at"]
        effect.exit_code = data.get("exit_code")
        effect.signal = data.get("signal")
        effect.error = data.get("error")
        effect.result = data.get("result")
        effect.cancel_reason = data.get("cancel_reason")
        effect.cancel_message = data.get("cancel_message")
        effect.terminal_seq = event.seq
        effect.pid = None
        if not effect.output.closed:
            effect.output.close()
        effect.done.set()
        effect.notify()
        self._remember_finished(effect)
        self._completed.set()
        self._completed = anyio.Event()
        for hook in self.on_terminal:
            try:
                hook(effect)
            except Exception:  # an observer's failure must not undo an effect's end
                log.exception("effect %s: an on_terminal hook failed", effect.effect_id)

    def _remember_finished(self, effect: Effect) -> None:
        """Keeps memory bounded: past `_KEEP_FINISHED` finished effects, the oldest are dropped (the
        journal and the output file still answer for them; whoever holds one keeps a valid object)."""
        self._finished[effect.effect_id] = None
        while len(self._finished) > _KEEP_FINISHED:
            old, _ = self._finished.popitem(last=False)
            if (dropped := self._effects.get(old)) is not None and dropped.terminal:
                del self._effects[old]

    # --- recovery --------------------------------------------------------------------------------

    async def _recover(self) -> None:
        """Ends effects the last server left running (`interrupted`) and schedules pending and queued ones."""
        rows = await self.journal.active_effects()
        interrupted = [row for row in rows if row["status"] == "running"]
        left = await anyio.to_thread.run_sync(effect_processes, {row["effect_id"] for row in interrupted})
        for row in interrupted:
            pids = set(left.get(row["effect_id"], ()))
            if row["pid"] and row["pid_start"] and process_start_time(row["pid"]) == row["pid_start"]:
                pids.add(row["pid"])
            for pid in pids:
                with suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        events = []
        for row in interrupted:
            log_path = self._log_path(row["effect_id"])
            size = log_path.stat().st_size if log_path.exists() else 0
            # A cancel asked for before the crash stands; anything else running was interrupted.
            cancelled = row["cancel_reason"] is not None
            events.append(
                terminal_event(
                    "cancelled" if cancelled else "failed",
                    row["run_id"],
                    row["effect_id"],
                    now_iso(),
                    error=None if cancelled else "interrupted",
                    output_bytes=size,
                    output_truncated=size >= self.output_limit_bytes,
                    attempt=row["attempt"],
                    cancel_reason=row["cancel_reason"],
                    cancel_message=row["cancel_message"],
                )
            )
        if events:
            await self.journal.append(*events)
        for row in rows:
            if row["status"] == "running":
                continue
            log_ = OutputLog.existing(self._log_path(row["effect_id"]), self.output_limit_bytes, closed=False)
            effect = self._adopt(Effect.from_row(row, log_))
            if effect.status == "pending" and not effect.spec.depends_on:
                effect.status = "queued"
            self._apply_group_limit(effect.spec)
            self._effects[effect.effect_id] = effect
        for row in rows:
            if row["status"] != "running":
                self._spawn_driver(self._effects[row["effect_id"]])

    @staticmethod
    async def cancel_waiting_in_journal(journal: Journal, effect_id: str, message: str | None) -> bool:
        """Cancels a pending or queued effect of a journal no server runs; False when it is not waiting."""
        row = await journal.effect(effect_id)
        if row is None or row["status"] not in ("pending", "queued"):
            return False
        await journal.append(terminal_event("cancelled", row["run_id"], effect_id, now_iso(), cancel_message=message))
        return True

    def live_effects(self) -> list[Effect]:
        return [e for e in self._effects.values() if not e.terminal]
