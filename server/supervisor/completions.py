"""Waiting for effects to end: `await_group`'s all and any, with a cursor over the order they ended in."""

from __future__ import annotations

from collections.abc import Sequence

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
        self, effects: Sequence[Effect], mode: str, cursor: int, within_s: float
    ) -> tuple[list[Effect], bool]:
        """Waits until all `effects` are terminal (`all`) or one ended after `cursor` (`any`). Returns
        the effects that ended after `cursor`, in the order they ended (their terminal event's seq),
        and whether the wait timed out."""

        def ended_after() -> list[Effect]:
            done = [e for e in effects if e.terminal and (e.terminal_seq or 0) > cursor]
            return sorted(done, key=lambda e: e.terminal_seq or 0)

        def satisfied() -> bool:
            return all(e.terminal for e in effects) or (mode == "any" and bool(ended_after()))

        with anyio.move_on_after(within_s):
            while not satisfied():
                await self._ended.wait()
        return ended_after(), not satisfied()
