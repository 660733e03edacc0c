"""Runs and idempotency keys: the bookkeeping a dispatch needs before it journals anything."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

import anyio

from effectd.errors import InvalidRequestError
from effectd.journal.projection import Event
from effectd.journal.store import Journal
from effectd.model.records import now_iso


def check_run_id(run_id: str) -> None:
    if not run_id or "\0" in run_id or len(run_id) > 256:
        raise InvalidRequestError("a run_id is 1 to 256 characters without NUL")


class Runs:
    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self._known: set[str] = set()
        self._lock = anyio.Lock()
        self._key_locks: dict[tuple[str, str], anyio.Lock] = {}

    async def created(self, run_id: str) -> list[Event]:
        """A RUN_CREATED event for a run the journal does not know yet (claimed now, so it is written
        once, with the first effect's events), else nothing."""
        if run_id in self._known:
            return []
        async with self._lock:
            if run_id in self._known or await self._journal.run_exists(run_id):
                self._known.add(run_id)
                return []
            self._known.add(run_id)
            return [Event("RUN_CREATED", run_id, None, {"created_at": now_iso()})]

    async def append(self, run_id: str, events: list[Event]) -> list[Event]:
        """Appends events; a RUN_CREATED among them that fails to commit is unclaimed again."""
        try:
            return await self._journal.try_append(*events)
        except BaseException:
            if events and events[0].type == "RUN_CREATED":
                self._known.discard(run_id)
            raise

    @asynccontextmanager
    async def holding_keys(self, run_id: str, keys: Sequence[str]) -> AsyncIterator[None]:
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
