"""Waiting for effects to end: `await_group`'s all and any, with a cursor over the order they ended in."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence

import anyio

from effectd.supervisor.effect import Effect


class Completions:
    """Wakes every waiter when any effect ends; each waiter checks its own set."""

    def __init__(self) -> None:
        self._ended = anyio.Event()

    def notify(self) -> None:
        self._ended.set()
        self._ended = anyio.Event()

    async def wait(
        self,
        effects: Sequence[Effect],
        mode: str,
        cursor: int,
        within_s: float,
        sync: Callable[[], Awaitable[int]] | None = None,
    ) -> tuple[list[Effect], bool]:
        """Waits until all `effects` are terminal (`all`) or one ended after `cursor` (`any`). Returns
        the effects that ended after `cursor`, in the order they ended (their terminal event's seq),
        and whether the wait timed out.

        With other servers on the journal, `sync` applies what they committed and returns the seq up to
        which every event is applied here. Only ends up to that seq count: one of this server's own
        effects that ended at seq 12 waits until seq 11, another server's, has been seen, so a cursor
        returned never passes over a completion not yet reported."""
        seen = math.inf

        def ended_after() -> list[Effect]:
            done = [e for e in effects if e.terminal and cursor < (e.terminal_seq or 0) <= seen]
            return sorted(done, key=lambda e: e.terminal_seq or 0)

        def satisfied() -> bool:
            complete = all(e.terminal and (e.terminal_seq or 0) <= seen for e in effects)
            return complete or (mode == "any" and bool(ended_after()))

        with anyio.move_on_after(within_s):
            while True:
                ended = self._ended
                if sync is not None:
                    seen = await sync()
                if satisfied():
                    break
                if any(e.terminal and (e.terminal_seq or 0) > seen for e in effects):
                    await anyio.sleep(0.005)  # committed already: the next sync takes it in
                    continue
                await ended.wait()
        return ended_after(), not satisfied()
