"""Driving one effect through its life: dependencies, a slot, attempts, retries with backoff, its end.

Each effect has one task in the supervisor's task group running `Driver.run`; only that task ends the
effect, so an effect gets exactly one terminal event. Every wait it makes (dependencies, a slot, a
backoff) ends at once when the effect is cancelled or the server stops.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager, suppress

import anyio

from effectd.errors import JournalUnavailableError
from effectd.journal.projection import Event
from effectd.supervisor import events
from effectd.supervisor.attempt import Attempts
from effectd.supervisor.effect import CancelRequest, Effect
from effectd.supervisor.events import Outcome
from effectd.supervisor.limits import Limits
from effectd.supervisor.pipes import until_started

log = logging.getLogger("effectd")

Record = Callable[[Effect, Event], Awaitable[None]]
Finish = Callable[[Effect, Outcome], Awaitable[None]]
GetMany = Callable[[Sequence[str]], Awaitable[list[Effect]]]


class Driver:
    """Drives effects, given what it needs by name (keyword-only), not the supervisor that holds it:

    `record` journals and applies an event, `finish` the terminal one; `get_many` finds effects by id
    (dependencies); `attempts` runs one attempt (or a flow step's `instead`); `limits` hands out the
    slots; `journal_clear` waits until the journal can record a start; `closing` says whether the
    server is stopping; `keep_queued` whether a stop leaves waiting effects for the next server.
    """

    def __init__(
        self,
        *,
        record: Record,
        finish: Finish,
        get_many: GetMany,
        attempts: Attempts,
        limits: Limits,
        journal_clear: Callable[[], Awaitable[None]],
        closing: Callable[[], bool],
        keep_queued: bool,
    ) -> None:
        self._record, self._finish, self._get_many = record, finish, get_many
        self._attempts, self._limits, self._journal_clear = attempts, limits, journal_clear
        self._closing, self._keep_queued = closing, keep_queued

    @contextmanager
    def _interruptible(self, effect: Effect) -> Iterator[anyio.CancelScope]:
        """A scope for an effect's waits (dependencies, slots, backoff) that a cancel request or a
        shutdown ends, including one that came before the wait began."""
        with anyio.CancelScope() as scope:
            effect.waiting = scope
            if effect.cancel is not None or self._closing():
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
                    await self._finish(effect, Outcome("failed", error="internal error in effectd (see its log)"))

    async def run(self, effect: Effect) -> None:
        """Takes the effect from pending or queued to its end (or leaves it waiting for the next server)."""
        if effect.status == "pending":
            blocked = await self._wait_dependencies(effect)
            if effect.cancel is not None:
                return await self._finish(effect, self._cancelled_outcome(effect))
            if self._detached(effect):
                return
            if blocked is not None:
                why = f"dependency {blocked.effect_id} {blocked.status}"
                return await self._finish(effect, Outcome("skipped", error=why))
            if effect.spec.start_approval and effect.attempt == 0:
                denied = await self._start_allowed(effect)
                if effect.cancel is not None:
                    return await self._finish(effect, self._cancelled_outcome(effect))
                if self._detached(effect):
                    return
                if denied is not None:
                    return await self._finish(effect, denied)
            effect.check_transition("queued")
            await self._record(effect, events.queued(effect))
        instead = self._attempts.instead
        if instead is not None and effect.spec.flow_id is not None and effect.attempt == 0:
            outcome = await instead(effect)  # a flow step resumed (cached) or fanned out: no process of its own
            if outcome is not None:
                return await self._finish(effect, outcome)
        while not await self._attempt(effect):
            if effect.spec.retry_backoff_s > 0:
                with self._interruptible(effect):
                    await anyio.sleep(effect.spec.retry_backoff_s * 2 ** (effect.attempt - 1))
                if effect.cancel is not None:
                    return await self._finish(effect, self._cancelled_outcome(effect))

    async def _start_allowed(self, effect: Effect) -> Outcome | None:
        """A flow step with `approval: true` waits here, pending, until its start is answered: None when it
        is allowed, else its `skipped` outcome with the answer's message. A cancel or a stop ends the wait."""
        ask = self._attempts.ask_start
        if ask is None:
            return Outcome("skipped", error="this server asks nobody, so a step with `approval: true` cannot start")
        answer: tuple[bool, str] | None = None
        with self._interruptible(effect):
            answer = await ask(effect)
        if answer is None or answer[0]:
            return None  # allowed, or interrupted (the caller sees the cancel or the stop)
        message = answer[1]
        return Outcome("skipped", error=f"its start was denied: {message}", cancel=CancelRequest("user", message, None))

    def _detached(self, effect: Effect) -> bool:
        return self._closing() and self._keep_queued and effect.cancel is None

    async def _wait_dependencies(self, effect: Effect) -> Effect | None:
        """Waits for every dependency to end; returns the first that did not succeed, if any."""
        dependencies = await self._get_many(effect.spec.depends_on)

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
                for limiter in self._limits.for_spec(effect.spec):
                    try:  # a free slot (none queued before it) is taken without the awaited form's checkpoint
                        limiter.acquire_on_behalf_of_nowait(effect)
                    except anyio.WouldBlock:
                        await limiter.acquire_on_behalf_of(effect)
                    held.append(limiter)
                await self._journal_clear()  # no process starts while the journal cannot record it
            if self._closing() and effect.cancel is None:
                if self._keep_queued:
                    return True
                effect.request_cancel(CancelRequest("shutdown", None, None))
            if effect.cancel is not None:
                await self._finish(effect, self._cancelled_outcome(effect))
                return True
            outcome = await self._attempts.run(effect)
            attempt = outcome.attempt or effect.attempt
            retry = (
                outcome.status == "failed"
                and attempt < effect.spec.max_attempts
                and effect.cancel is None
                and not self._closing()
            )
            if retry:
                if effect.status == "running":
                    effect.check_transition("queued")
                await self._record(effect, events.retry(effect, outcome))
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
