"""Driving one effect through its life: dependencies, a slot, attempts, retries with backoff, its end.

Each effect has one task in the supervisor's task group running `Driver.run`; only that task ends the
effect, so an effect gets exactly one terminal event. Every wait it makes (dependencies, a slot, a
backoff) ends at once when the effect is cancelled or the server stops.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING

import anyio

from effectd.errors import JournalUnavailableError
from effectd.supervisor import events
from effectd.supervisor.effect import Effect
from effectd.supervisor.events import Outcome
from effectd.supervisor.pipes import until_started

if TYPE_CHECKING:
    from effectd.supervisor.core import Supervisor

log = logging.getLogger("effectd")


class Driver:
    def __init__(self, supervisor: Supervisor) -> None:
        self._sup = supervisor

    @contextmanager
    def _interruptible(self, effect: Effect) -> Iterator[anyio.CancelScope]:
        """A scope for an effect's waits (dependencies, slots, backoff) that a cancel request or a
        shutdown ends, including one that came before the wait began."""
        with anyio.CancelScope() as scope:
            effect.waiting = scope
            if effect.cancel is not None or self._sup.closing:
                scope.cancel()
            try:
                yield scope
            finally:
                effect.waiting = None

    async def run_guarded(self, effect: Effect) -> None:
        """`run`, where a failure of effectd's own ends the effect `failed` instead of escaping."""
        try:
            await self.run(effect)
        except JournalUnavailableError as exc:  # the server stopped before the journal took the effect's end
            log.error("effect %s: its end was not journaled: %s", effect.effect_id, exc)
        except Exception:
            log.exception("effect %s: the supervisor failed", effect.effect_id)
            if not effect.terminal:
                with anyio.CancelScope(shield=True), suppress(JournalUnavailableError):  # stopping
                    await self._sup.finish(effect, Outcome("failed", error="internal error in effectd (see its log)"))

    async def run(self, effect: Effect) -> None:
        """Takes the effect from pending or queued to its end (or leaves it waiting for the next server)."""
        if effect.status == "pending":
            blocked = await self._wait_dependencies(effect)
            if effect.cancel is not None:
                return await self._sup.finish(effect, self._cancelled_outcome(effect))
            if self._detached(effect):
                return
            if blocked is not None:
                why = f"dependency {blocked.effect_id} {blocked.status}"
                return await self._sup.finish(effect, Outcome("skipped", error=why))
            effect.check_transition("queued")
            await self._sup.record(effect, events.queued(effect))
        instead = self._sup.attempts.instead
        if instead is not None and effect.spec.flow_id is not None and effect.attempt == 0:
            outcome = await instead(effect)  # a flow step resumed (cached) or fanned out: no process of its own
            if outcome is not None:
                return await self._sup.finish(effect, outcome)
        while not await self._attempt(effect):
            if effect.spec.retry_backoff_s > 0:
                with self._interruptible(effect):
                    await anyio.sleep(effect.spec.retry_backoff_s * 2 ** (effect.attempt - 1))
                if effect.cancel is not None:
                    return await self._sup.finish(effect, self._cancelled_outcome(effect))

    def _detached(self, effect: Effect) -> bool:
        return self._sup.closing and self._sup.keep_queued and effect.cancel is None

    async def _wait_dependencies(self, effect: Effect) -> Effect | None:
        """Waits for every dependency to end; returns the first that did not succeed, if any."""
        dependencies = await self._sup.get_many(effect.spec.depends_on)

        def blocked() -> Effect | None:
            return next((d for d in dependencies if d.terminal and d.status != "succeeded"), None)

        async def until_done(dependency: Effect, scope: anyio.CancelScope) -> None:
            if dependency.effect_id == effect.spec.pipe_from:
                await until_started(dependency)  # piped: this effect runs beside it, reading its output
                if not dependency.terminal:
                    return
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

    async def _attempt(self, effect: Effect) -> bool:
        """Waits for a slot and runs the process once; True when the effect is done with (terminal or
        left for the next server), False when it failed and will be tried again.

        The terminal event is written while the slot is still held, so the journal never shows
        more effects running at once than the limits allow.
        """
        held: list[anyio.CapacityLimiter] = []
        try:
            with self._interruptible(effect):
                for limiter in self._sup.limits.for_spec(effect.spec):
                    try:  # a free slot (none queued before it) is taken without the awaited form's checkpoint
                        limiter.acquire_on_behalf_of_nowait(effect)
                    except anyio.WouldBlock:
                        await limiter.acquire_on_behalf_of(effect)
                    held.append(limiter)
                await self._sup.journal.wait_clear()  # no process starts while the journal cannot record it
            if self._sup.closing and effect.cancel is None:
                if self._sup.keep_queued:
                    return True
                self._sup.request_cancel(effect, "shutdown")
            if effect.cancel is not None:
                await self._sup.finish(effect, self._cancelled_outcome(effect))
                return True
            outcome = await self._sup.attempts.run(effect)
            attempt = outcome.attempt or effect.attempt
            retry = (
                outcome.status == "failed"
                and attempt < effect.spec.max_attempts
                and effect.cancel is None
                and not self._sup.closing
            )
            if retry:
                if effect.status == "running":
                    effect.check_transition("queued")
                await self._sup.record(effect, events.retry(effect, outcome))
                return False
            await self._sup.finish(effect, outcome)
            return True
        finally:
            for limiter in reversed(held):
                limiter.release_on_behalf_of(effect)

    def _cancelled_outcome(self, effect: Effect) -> Outcome:
        if effect.cancel is not None and effect.cancel.skip is not None:
            return Outcome("skipped", error=effect.cancel.skip)
        return Outcome("cancelled", cancel=effect.cancel)
