"""`Flag`: a one-shot event whose anyio.Event is made only when something waits on it.

Making an `anyio.Event` looks the async backend up every time. An effect carries several events
(done, cancelled, changed, and its watch's own), most of them set before anyone waits or never
waited on at all, so making each eagerly was a measurable share of the server's work per effect.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel


class Flag:
    """Set once, waited on by any number of tasks; `wait` on a set flag returns after a checkpoint,
    as `anyio.Event.wait` does."""

    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._event: anyio.Event | None = None
        self._set = False

    def set(self) -> None:
        self._set = True
        if self._event is not None:
            self._event.set()

    def is_set(self) -> bool:
        return self._set

    async def wait(self) -> None:
        if self._set:
            await anyio.lowlevel.checkpoint()
            return
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()
