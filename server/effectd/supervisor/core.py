"""The supervisor: every effect's life from request to its one terminal event.

Every change of an effect is an event: committed to the journal first, then applied to the live
`Effect` by the same fold that builds the projection and replay (`Supervisor.record`). One task per
effect, in the supervisor's task group, drives it through pending -> queued -> running -> terminal;
only that task ends the effect, so an effect gets exactly one terminal event.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from effectd.errors import ConflictError, InvalidRequestError
from effectd.journal.peer_writes import KeyTakenError
from effectd.journal.projection import EffectState, Event
from effectd.journal.store import Journal
from effectd.journal.usable import private_dir
from effectd.model.records import CancelReason, EffectRecord, EffectSpec, new_id
from effectd.runner.base import Runner
from effectd.runner.git import Worktrees
from effectd.runner.local import LocalRunner
from effectd.supervisor import events
from effectd.supervisor.attempt import DRAIN_AFTER_EXIT_S, GROUP_GONE_BOUND_S, Attempts, Render
from effectd.supervisor.completions import Completions
from effectd.supervisor.driver import Driver
from effectd.supervisor.effect import CancelRequest, Effect
from effectd.supervisor.events import Outcome
from effectd.supervisor.limits import Limits
from effectd.supervisor.recovery import recover
from effectd.supervisor.registry import Registry
from effectd.supervisor.runs import Runs, check_run_id
from effectd.supervisor.workspaces import Workspaces
from effectd.support.feed import ChangeFeed

log = logging.getLogger("effectd")


class Supervisor:
    """Schedules, runs, cancels and recovers effects."""

    def __init__(
        self,
        journal: Journal,
        *,
        output_dir: Path,
        max_concurrency: int = 16,
        output_limit_bytes: int = 64 * 1024 * 1024,
        stall_after_s: float | None = 60.0,
        result_grace_s: float = 2.0,
        result_limit_bytes: int = 1024 * 1024,
        harness_limits: dict[str, int] | None = None,
        runner: Runner | None = None,
        keep_queued: bool = False,
        base_env: dict[str, str] | None = None,
        feed: ChangeFeed | None = None,
        worktree_dir: Path | None = None,
        owner: str | None = None,
        owners: Collection[str] | None = None,
    ) -> None:
        self.journal = journal
        self.server_id, self.owners = owner, owners  # journaled as `owner`; whose effects to recover (None: all)
        self.feed = feed or ChangeFeed()
        self.output_dir = output_dir
        self.stall_after_s = stall_after_s
        self.peer_waiting_for: Callable[[str], str | None] = lambda effect_id: None  # set by Approvals
        self.keep_queued = keep_queued
        self.default_run_id = new_id("run_")
        self.registry = Registry(journal, output_dir, output_limit_bytes, self._adopt)
        self.limits = Limits(max_concurrency, harness_limits)
        self.attempts = Attempts(
            runner or LocalRunner(),
            self.record,
            self.request_cancel,
            base_env=os.environ if base_env is None else base_env,
            result_path=lambda effect_id: str(self.registry.result_path(effect_id)),
            result_grace_s=result_grace_s,
            result_limit_bytes=result_limit_bytes,
        )
        self.workspaces = Workspaces(Worktrees(worktree_dir or output_dir.parent / "worktrees"), self.record)
        self.attempts.prepare = self.workspaces.prepare
        self._runs = Runs(journal)
        self.completions = Completions()  # await_group waits on it
        self._tg: TaskGroup | None = None
        self._closing = False
        self._active_tasks = 0
        self._idle = anyio.Event()
        self._idle.set()
        self._step_ended: Callable[[Effect], None] | None = None
        self._driver = Driver(
            record=self.record, finish=self.finish, get_many=self.registry.get_many, attempts=self.attempts,
            limits=self.limits, journal_clear=journal.wait_clear, closing=lambda: self._closing,
            keep_queued=keep_queued,
        )  # fmt: skip

    def attach_flows(self, render: Render, step_ended: Callable[[Effect], None]) -> None:
        """Wires the flow manager in (the engine does, once): `render` fills a templated step's argv
        and stdin when it starts; `step_ended` is told of every effect's end, synchronously, and must
        only record it and wake its own tasks."""
        self.attempts.render = render
        self._step_ended = step_ended

    # --- lifecycle -------------------------------------------------------------------------------

    @asynccontextmanager
    async def running(self, before_start: Callable[[], Awaitable[None]] | None = None) -> AsyncIterator[Supervisor]:
        """Recovers what the last server left (then runs `before_start`, with every waiting effect
        loaded but none started), runs effects until the context ends, then shuts down."""
        private_dir(self.output_dir)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            waiting = await recover(self.journal, self.attempts.runner, self.registry, self.workspaces, self.owners)
            for effect in waiting:  # this server's now (its own or taken over), to be driven here
                effect.local = True
                self.limits.apply_spec(effect.spec)
            if before_start is not None:
                await before_start()
            for effect in waiting:
                self._spawn_driver(effect)
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
        for effect in self.registry.live():
            if effect.status == "running" or not self.keep_queued:
                self.request_cancel(effect, "shutdown")
                graces.append(effect.grace_s)  # an earlier cancel's own grace, if one is under way
            elif effect.waiting is not None:
                effect.waiting.cancel()  # left pending or queued in the journal: the next start runs it
        with anyio.move_on_after(max(graces) + 1.5):
            await self._idle.wait()

    @property
    def closing(self) -> bool:
        """True once shutdown began: no new effects are taken."""
        return self._closing

    def _refuse_when_closing(self) -> None:
        if self._closing:
            raise InvalidRequestError("the server is shutting down and takes no new effects")

    def _spawn_driver(self, effect: Effect) -> None:
        assert self._tg is not None, "the supervisor is not running"
        effect.local = True
        self._active_tasks += 1
        self._idle = anyio.Event() if self._idle.is_set() else self._idle
        self._tg.start_soon(self._drive, effect, name=f"effect {effect.effect_id}")

    # --- state changes ---------------------------------------------------------------------------

    def _adopt(self, effect: Effect) -> Effect:
        effect.stall_after_s = self.stall_after_s
        effect.on_change = lambda changed: self.feed.publish(changed.effect_id)
        effect.waiting_for = None if effect.local or effect.terminal else self.peer_waiting_for(effect.effect_id)
        return effect

    async def record(self, effect: Effect, event: Event) -> None:
        """Journals an event of the effect, then applies it: memory never shows what the journal could lose.
        Through a journal fault it waits for the journal; a progress report is refused instead."""
        (stamped,) = await (self.journal.try_append if events.best_effort(event) else self.journal.append)(event)
        self.apply(effect, stamped)

    def apply(self, effect: Effect, event: Event) -> None:
        """Applies a committed event to the effect (this server's, or another's it follows)."""
        was_terminal = effect.terminal
        effect.apply(event)
        if effect.terminal and not was_terminal:
            self.registry.remember_finished(effect)
            self.completions.notify()
            if self._step_ended is not None:
                try:
                    self._step_ended(effect)
                except Exception:  # the flow manager's failure must not undo an effect's end
                    log.exception("effect %s: the flow manager failed to take its end", effect.effect_id)

    async def finish(self, effect: Effect, outcome: Outcome) -> None:
        """Writes the effect's one terminal event (unless it has ended already), then applies it."""
        if effect.terminal:
            return
        effect.check_transition(outcome.status)
        with anyio.CancelScope(shield=True):
            why = outcome.cancel.reason if outcome.status == "cancelled" and outcome.cancel else outcome.error
            outcome.workspace = await self.workspaces.finish(effect, outcome.status, why) or outcome.workspace
            await self.record(effect, events.ended(effect, outcome))

    # --- lookups ---------------------------------------------------------------------------------

    async def get(self, effect_id: str) -> Effect:
        return await self.registry.get(effect_id)

    async def get_many(self, effect_ids: Sequence[str]) -> list[Effect]:
        return await self.registry.get_many(effect_ids)

    def records(self, rows: Sequence[dict[str, Any]]) -> list[EffectRecord]:
        return self.registry.records(rows)

    def live_effects(self) -> list[Effect]:
        return self.registry.live()

    def limit_group(self, group: str, max_concurrency: int) -> None:
        self.limits.limit_group(group, max_concurrency)

    # --- dispatch --------------------------------------------------------------------------------

    async def dispatch(self, spec: EffectSpec, run_id: str | None = None) -> tuple[Effect, bool]:
        """Journals a new effect and schedules it; returns it and whether it is new (False: same key)."""
        run_id = run_id or self.default_run_id
        self._refuse_when_closing()
        check_run_id(run_id)
        if spec.key is None:
            return await self._dispatch(spec, run_id), True
        async with self._runs.holding_keys(run_id, [spec.key]):
            row = await self.journal.by_key(run_id, spec.key)
            try:
                if row is None:
                    return await self._dispatch(spec, run_id), True
                taken = row["effect_id"]
            except KeyTakenError as error:  # another server journaled the key first: the database decides
                taken = error.effect_id
            existing = await self.get(taken)
            if existing.spec.identity() != spec.identity():
                raise ConflictError(
                    f"key {spec.key!r} of run {run_id!r} already names effect {existing.effect_id} with "
                    "other arguments; use a new key, or the same arguments to get that effect back"
                )
            return existing, False

    async def _dispatch(self, spec: EffectSpec, run_id: str) -> Effect:
        dependencies = await self.get_many(spec.depends_on) if spec.depends_on else []
        requested = events.requested(new_id("eff_"), run_id, spec, self.server_id)
        batch = [*await self._runs.created(run_id), requested]
        blocked = next((d for d in dependencies if d.terminal and d.status != "succeeded"), None)
        stamped = await self._runs.append(run_id, batch)
        effect = self._born(stamped[-1], spec)
        if blocked is not None:  # a dependency already failed: skipped at once, in the record dispatch returns
            await self.finish(effect, Outcome("skipped", error=f"dependency {blocked.effect_id} {blocked.status}"))
        else:
            self._spawn_driver(effect)
        return effect

    async def dispatch_many(
        self, specs: Sequence[tuple[str, EffectSpec]], run_id: str | None, extra: Sequence[Event] = ()
    ) -> list[Effect]:
        """Journals several effects with ids chosen by the caller (and `extra` events) in one commit,
        then schedules them. Used by flows, whose steps name each other's ids in `depends_on`."""
        self._refuse_when_closing()
        run_id = run_id or self.default_run_id
        check_run_id(run_id)
        keys = [spec.key for _, spec in specs if spec.key is not None]
        async with self._runs.holding_keys(run_id, keys):
            for _, spec in specs:
                if spec.key is not None and (row := await self.journal.by_key(run_id, spec.key)) is not None:
                    step = f"step {spec.step_id!r}: " if spec.step_id else ""
                    raise ConflictError(
                        f"{step}key {spec.key!r} already names effect {row['effect_id']} of run {run_id!r}; "
                        "give every new effect a key not used before in the run"
                    )
            batch = [*await self._runs.created(run_id), *extra]
            batch += [events.requested(effect_id, run_id, spec, self.server_id) for effect_id, spec in specs]
            try:
                stamped = await self._runs.append(run_id, batch)
            except KeyTakenError as taken:
                raise ConflictError(f"{taken}; give every new effect a key not used before in the run") from None
        effects = [self._born(event, spec) for event, (_, spec) in zip(stamped[-len(specs) :], specs, strict=True)]
        for effect in effects:
            self._spawn_driver(effect)
        return effects

    def _born(self, requested: Event, spec: EffectSpec) -> Effect:
        """The live effect a committed EFFECT_REQUESTED starts."""
        output = self.registry.new_output(requested.effect_id or "")
        effect = self._adopt(Effect(EffectState.requested(requested), spec, output))
        self.limits.apply_spec(spec)
        self.registry.add(effect)
        return effect

    # --- cancellation ----------------------------------------------------------------------------

    def request_cancel(
        self,
        effect: Effect,
        reason: CancelReason,
        message: str | None = None,
        grace_s: float | None = None,
        *,
        skip: str | None = None,
    ) -> bool:
        """Asks the effect's task to stop it (see `Effect.request_cancel`): synchronous, so it can run
        while a cancelled caller unwinds."""
        return effect.request_cancel(CancelRequest(reason, message, grace_s, skip))

    def request_skip(self, effect: Effect, why: str, reason: CancelReason) -> bool:
        """Ends an effect as `skipped` (error `why`) if it has not started, else cancels it with `reason`."""
        return self.request_cancel(effect, reason, skip=why)

    async def cancel(
        self,
        effect: Effect,
        reason: CancelReason = "user",
        message: str | None = None,
        grace_s: float | None = None,
        within_s: float | None = None,
    ) -> Effect:
        """Cancels the effect and returns once it is terminal (its process group gone), or after
        `within_s` with the kill still under way (a grace longer than a tool call may last)."""
        self.request_cancel(effect, reason, message, grace_s)
        bound = effect.grace_s + GROUP_GONE_BOUND_S + DRAIN_AFTER_EXIT_S + 5
        with anyio.move_on_after(bound if within_s is None else min(bound, within_s)):
            await effect.done.wait()
        return effect

    async def cancel_many(
        self, effects: Sequence[Effect], reason: CancelReason, message: str | None, within_s: float | None = None
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

    async def _drive(self, effect: Effect) -> None:
        try:
            await self._driver.run_guarded(effect)
        finally:
            self._active_tasks -= 1
            if self._active_tasks == 0:
                self._idle.set()
