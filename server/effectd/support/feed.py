"""The change feed: which effects changed, delivered to any number of subscribers, coalesced.

The supervisor calls `ChangeFeed.publish(effect_id)` on every change of an effect (status, output,
progress). It only records the id in each subscription and wakes it: no subscriber code runs inside
the supervisor, and no subscriber task lives in the supervisor's task group. Each subscriber reads
its own `Changes` in its own task, at its own pace, at most `per_second` batches a second; a burst
of changes to one effect comes out once.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio


class Changes:
    """One subscription: an async iterator of the ids of the effects that changed since the last batch."""

    def __init__(self, per_second: float) -> None:
        self._interval = 1 / per_second if per_second > 0 else 0.0
        self._ids: dict[str, None] = {}
        self._wake = anyio.Event()
        self._last = 0.0
        self.closed = False

    def _add(self, effect_id: str) -> None:
        self._ids[effect_id] = None
        self._wake.set()

    def close(self) -> None:
        """Ends the iteration (the batch being waited for comes out empty, then it stops)."""
        self.closed = True
        self._wake.set()

    def __aiter__(self) -> Changes:
        return self

    async def __anext__(self) -> list[str]:
        while not self._ids and not self.closed:
            await self._wake.wait()
            self._wake = anyio.Event()
        if self.closed:
            raise StopAsyncIteration
        await anyio.sleep(max(0.0, self._last + self._interval - time.monotonic()))
        batch, self._ids = list(self._ids), {}
        self._last = time.monotonic()
        return batch

    async def next_within(self, seconds: float) -> list[str] | None:
        """The next batch, or None when none came within `seconds` (for keep-alives) or the subscription closed."""
        with anyio.move_on_after(seconds):
            try:
                return await self.__anext__()
            except StopAsyncIteration:
                return None
        return None


class ChangeFeed:
    """Fans changes out to the subscriptions open at the time; `version` counts every change."""

    def __init__(self) -> None:
        self._subscriptions: set[Changes] = set()
        self.version = 0

    def publish(self, effect_id: str) -> None:
        self.version += 1
        for subscription in self._subscriptions:
            subscription._add(effect_id)

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)

    @asynccontextmanager
    async def subscribe(self, per_second: float = 10) -> AsyncIterator[Changes]:
        """A subscription open for the context: changes published from now on, coalesced."""
        changes = Changes(per_second)
        self._subscriptions.add(changes)
        try:
            yield changes
        finally:
            self._subscriptions.discard(changes)
            changes.close()
