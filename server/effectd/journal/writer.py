"""The journal's one writer (per server): group commit, `seq` given at commit, and journal faults
ridden out.

Appends queue up while a commit is under way and are written together in the next transaction (one
transaction per batch). Each event gets its `seq` inside its batch's transaction, from the journal
itself (other servers may write it too: see `shared.py`), so a refused commit leaves no gap.
Journal faults (disk full, a lock held elsewhere, I/O errors; see `faults.py`) never lose an
`append`: the writer keeps its events, in order, and tries again with backoff until the journal
takes them. A `try_append` (a dispatch: someone is waiting for the answer) is refused instead with
JournalUnavailableError, nothing written; at once while the writer holds events back.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from effectd.errors import JournalUnavailableError
from effectd.journal.budgets import BUDGET_COLUMNS, BUDGET_EVENTS, UPSERT_BUDGET, budget_key, fold_budget
from effectd.journal.faults import journal_fault
from effectd.journal.peer_writes import begin_batch, screen
from effectd.journal.projection import EFFECT_COLUMNS, FLOW_COLUMNS, EffectState, Event, fold_effect, fold_flow
from effectd.model.records import now_iso

log = logging.getLogger("effectd")

_INSERT_EVENT = "INSERT INTO events (seq, ts, run_id, effect_id, type, data) VALUES (?, ?, ?, ?, ?, ?)"
# An upsert on the primary key only: a clash on another unique index (a reused idempotency key) fails
# loudly instead of silently deleting the other effect's row, as INSERT OR REPLACE would.
_UPSERT_EFFECT = (
    f"INSERT INTO effects ({', '.join(EFFECT_COLUMNS)}) VALUES ({', '.join('?' * len(EFFECT_COLUMNS))}) "
    f"ON CONFLICT (effect_id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in EFFECT_COLUMNS[1:])}"
)
_UPSERT_FLOW = f"INSERT OR REPLACE INTO flows ({', '.join(FLOW_COLUMNS)}) VALUES ({', '.join('?' * len(FLOW_COLUMNS))})"
_BATCH_LIMIT = 2000


@dataclass
class _Pending:
    events: list[Event]
    done: anyio.Event
    durable: bool  # kept and tried again through journal faults; else refused with the fault
    error: BaseException | None = None
    committed: list[Event] = field(default_factory=list)  # the events with their `seq`, once committed
    refused: Exception | None = None  # this append alone was refused inside the batch (a key another took)


@dataclass(frozen=True)
class Retry:
    """How the writer waits between attempts at a commit the journal refused: doubling from `first_s`
    up to `max_s`, for as long as it takes (see `Writer.give_up`)."""

    first_s: float = 0.05
    max_s: float = 2.0


class Writer:
    """Writes events and keeps the projection tables in step; `run` it in a task group, `close` it."""

    def __init__(self, path: Path, db: aiosqlite.Connection, next_seq: int, retry: Retry | None = None) -> None:
        self.path = path
        self.db = db
        self.writing = anyio.Lock()  # a batch, or maintenance (`Journal.exclusive`), on the connection
        self._last_seq = next_seq - 1  # the last seq this writer knows of (its own, or seen in a batch)
        self._retry = retry or Retry()
        self.fault: str | None = None  # the cause of the last refused commit, until one succeeds
        self.held_back = 0  # events kept through a fault, waiting for the journal to take them
        self._clear = anyio.Event()  # set while nothing is held back
        self._clear.set()
        self._give_up_at: float | None = None
        self._wake = anyio.Event()
        self._send: MemoryObjectSendStream[_Pending]
        self._recv: MemoryObjectReceiveStream[_Pending]
        self._send, self._recv = anyio.create_memory_object_stream[_Pending](math.inf)
        self._states: dict[str, EffectState] = {}  # of the effects not yet terminal, as committed
        self._flow_rows: dict[str, dict[str, Any]] = {}
        self.batches = 0
        self.in_flight = 0

    def close(self) -> None:
        """Ends `run` once what was appended is settled (what a fault still holds back fails now)."""
        self.give_up()
        self._send.close()

    async def append(self, *events: Event) -> list[Event]:
        """Commits events, in order, and returns them with their `seq` and timestamp once durable.

        Through a journal fault it waits, however long the journal takes to accept writes again
        (until `give_up`). Raises only an error that is the events' own (a unique index clash)."""
        return await self._commit(events, durable=True)

    async def try_append(self, *events: Event) -> list[Event]:
        """Commits events as `append` does, but raises JournalUnavailableError, naming the cause, when
        the journal cannot take them now; then nothing of them is written."""
        self.check_writable()
        return await self._commit(events, durable=False)

    def check_writable(self, *, needed: bool = True) -> None:
        """Raises JournalUnavailableError, when a write is `needed`, while the writer holds events back
        through a journal fault (or has given up)."""
        if needed and self.fault is not None and (self.held_back or self._giving_up):
            raise self._unavailable()

    async def wait_clear(self) -> None:
        """Returns once the writer holds nothing back (at once, without a checkpoint, but through a fault)."""
        if not self._clear.is_set():
            await self._clear.wait()

    def give_up(self, within_s: float = 0.0) -> None:
        """Stops waiting for a journal that refuses writes (the server is stopping): the writer keeps
        trying for `within_s`, then what the journal still refuses fails with JournalUnavailableError."""
        at = time.monotonic() + within_s
        self._give_up_at = at if self._give_up_at is None else min(at, self._give_up_at)
        if within_s <= 0:
            self._wake.set()

    @property
    def _giving_up(self) -> bool:
        return self._give_up_at is not None and time.monotonic() >= self._give_up_at

    def _until_giving_up(self) -> float:
        return math.inf if self._give_up_at is None else max(0.0, self._give_up_at - time.monotonic())

    def _unavailable(self) -> JournalUnavailableError:
        return JournalUnavailableError(
            f"journal unavailable: {self.fault} ({self.path}); nothing was written: try again once the "
            "journal accepts writes"
        )

    async def _commit(self, events: Sequence[Event], *, durable: bool) -> list[Event]:
        now = now_iso()
        pending = _Pending([replace(event, ts=event.ts or now) for event in events], anyio.Event(), durable)
        self.in_flight += 1  # until the caller has its answer: committed events are then applied
        try:
            self._send.send_nowait(pending)
            with anyio.CancelScope(shield=True):
                await pending.done.wait()
        finally:
            self.in_flight -= 1
        if pending.error is not None:
            raise pending.error
        return pending.committed

    async def run(self) -> None:
        held: list[_Pending] = []  # appends a journal fault kept from being committed, oldest first
        try:
            await self._write_loop(held)
        finally:  # cancelled: nobody waits forever on an append
            for pending in held:
                if not pending.done.is_set():
                    self._settle(pending, JournalUnavailableError(f"journal {self.path} closed"))

    async def _write_loop(self, held: list[_Pending]) -> None:
        delay = self._retry.first_s
        async with self._recv:
            while True:
                retrying = bool(held)
                if not retrying:
                    try:
                        held.append(await self._recv.receive())
                    except anyio.EndOfStream:
                        return
                batch = held[:]
                while len(batch) < _BATCH_LIMIT:
                    try:
                        pending = self._recv.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                    if retrying and not pending.durable:  # refused at once: it does not wait for a retry
                        self._settle(pending, self._unavailable())
                    else:
                        batch.append(pending)
                with anyio.CancelScope(shield=True):
                    held[:] = await self._attempt(batch)
                self.held_back = sum(len(pending.events) for pending in held)
                if not held:
                    delay = self._retry.first_s
                    self._clear.set()
                    continue
                if self._clear.is_set():
                    self._clear = anyio.Event()
                if not retrying:
                    log.warning("%s; %d events held back until it does", self._unavailable(), self.held_back)
                with anyio.move_on_after(min(delay, self._until_giving_up())):
                    await self._wake.wait()
                delay = min(delay * 2, self._retry.max_s)

    async def _attempt(self, batch: list[_Pending]) -> list[_Pending]:
        """Commits the batch in one transaction, and settles its appends; returns those a journal fault
        held back (durable ones, unless giving up). Refused appends fail; an error that is not a fault
        is narrowed down to the appends that cause it, each then tried alone."""
        if not batch:
            return []
        try:
            async with self.writing:
                try:
                    await self._write_batch(batch)
                except Exception:  # rolled back before maintenance (`Journal.exclusive`) may take the connection
                    with suppress(Exception):
                        await self.db.rollback()
                    raise
        except Exception as exc:
            cause = journal_fault(exc)
            if cause is None:
                if len(batch) == 1:
                    self._settle(batch[0], exc)
                    return []
                held = []
                for pending in batch:
                    held += await self._attempt([pending])
                return held
            self.fault = cause
            held = [pending for pending in batch if pending.durable and not self._giving_up]
            for pending in batch:
                if pending not in held:
                    self._settle(pending, self._unavailable())
            return held
        if self.fault is not None:
            log.warning("journal %s accepts writes again", self.path)
        self.fault = None
        for pending in batch:
            self._settle(pending, pending.refused)
        return []

    @staticmethod
    def _settle(pending: _Pending, error: BaseException | None) -> None:
        pending.error = error
        pending.done.set()

    async def _write_batch(self, batch: list[_Pending]) -> None:
        """Opens the batch's transaction, gives its events their seqs, in order, after whatever other
        servers wrote (forgetting the cached states they changed), refuses reused keys to their
        appends alone, and writes and commits the rest."""
        head, changed_effects, changed_flows = await begin_batch(self.db, self._last_seq)
        for effect_id in changed_effects:
            self._states.pop(effect_id, None)
        for flow_id in changed_flows:
            self._flow_rows.pop(flow_id, None)
        self._last_seq = head
        events: list[Event] = []
        for pending, (kept, refused) in zip(batch, await screen(self.db, [p.events for p in batch]), strict=True):
            pending.refused = refused
            pending.committed = [replace(event, seq=head + 1 + n) for n, event in enumerate(kept)]
            head += len(kept)
            events += pending.committed
        await self._write(events)

    async def _write(self, events: list[Event]) -> None:
        effects: dict[str, EffectState] = {}
        flows: dict[str, dict[str, Any]] = {}
        runs: list[tuple[str, str]] = []
        budgets: dict[tuple[str, str], dict[str, Any] | None] = {}
        for event in events:
            if event.type == "RUN_CREATED" and event.run_id:
                runs.append((event.run_id, event.data["created_at"]))
            elif event.effect_id:
                state = effects.get(event.effect_id)
                if state is None and event.type != "EFFECT_REQUESTED":  # a new effect has no row to read
                    # A copy: the cached state changes only once this batch is committed.
                    known = await self._effect_state(event.effect_id)
                    state = replace(known) if known is not None else None
                folded = fold_effect(state, event)
                if folded is not None:
                    effects[event.effect_id] = folded
            elif event.type.startswith("FLOW_"):
                flow_id = event.data["flow_id"]
                flow = flows.get(flow_id) or await self._flow_row(flow_id)
                flow_row = fold_flow(flow, event)
                if flow_row is not None:
                    flows[flow_id] = flow_row
            elif event.type in BUDGET_EVENTS:
                key = budget_key(event)
                budgets[key] = fold_budget(budgets[key] if key in budgets else await self._budget_row(key), event)
        await self.db.executemany(
            _INSERT_EVENT,
            [(e.seq, e.ts, e.run_id, e.effect_id, e.type, json.dumps(e.data, separators=(",", ":"))) for e in events],
        )
        if runs:
            await self.db.executemany("INSERT OR IGNORE INTO runs (run_id, created_at) VALUES (?, ?)", runs)
        if effects:
            rows = [state.to_row() for state in effects.values()]
            await self.db.executemany(_UPSERT_EFFECT, [tuple(r[c] for c in EFFECT_COLUMNS) for r in rows])
        if flows:
            await self.db.executemany(_UPSERT_FLOW, [tuple(r[c] for c in FLOW_COLUMNS) for r in flows.values()])
        if rows_of_budgets := [tuple(r[c] for c in BUDGET_COLUMNS) for r in budgets.values() if r is not None]:
            await self.db.executemany(UPSERT_BUDGET, rows_of_budgets)
        await self.db.commit()
        self._last_seq = events[-1].seq if events else self._last_seq
        self.batches += 1
        for effect_id, state in effects.items():
            if state.terminal:
                self._states.pop(effect_id, None)
            else:
                self._states[effect_id] = state
        for flow_id, row in flows.items():
            if row["finished_at"] is None:
                self._flow_rows[flow_id] = row
            else:
                self._flow_rows.pop(flow_id, None)

    async def _effect_state(self, effect_id: str) -> EffectState | None:
        if effect_id in self._states:
            return self._states[effect_id]
        rows = await self.db.execute_fetchall("SELECT * FROM effects WHERE effect_id = ?", (effect_id,))
        return EffectState.from_row(dict(next(iter(rows)))) if rows else None

    async def _budget_row(self, key: tuple[str, str]) -> dict[str, Any] | None:
        rows = await self.db.execute_fetchall("SELECT * FROM budgets WHERE kind = ? AND name = ?", key)
        return dict(next(iter(rows))) if rows else None

    async def _flow_row(self, flow_id: str) -> dict[str, Any] | None:
        if flow_id in self._flow_rows:
            return self._flow_rows[flow_id]
        rows = await self.db.execute_fetchall("SELECT * FROM flows WHERE flow_id = ?", (flow_id,))
        return dict(next(iter(rows))) if rows else None
