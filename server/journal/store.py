"""The journal database: one batching writer (group commit), a read connection, and the queries."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from effectd.journal.budgets import BUDGET_COLUMNS, BUDGET_EVENTS, UPSERT_BUDGET, budget_key, fold_budget
from effectd.journal.migrations import migrate
from effectd.journal.projection import EFFECT_COLUMNS, FLOW_COLUMNS, EffectState, Event, fold_effect, fold_flow
from effectd.journal.shared import begin_batch, screen
from effectd.models import now_iso

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
    error: BaseException | None = None


async def _connect(path: Path, *, readonly: bool = False) -> aiosqlite.Connection:
    uri = f"file:{path}?mode=ro" if readonly else str(path)
    db = await aiosqlite.connect(uri, uri=readonly)
    db.row_factory = aiosqlite.Row
    await db.execute("PRAGMA busy_timeout = 10000")
    if not readonly:
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = NORMAL")
    return db


class Journal:
    """Appends events in order and keeps the projection tables in step, one transaction per batch.

    `append` returns once the batch that holds its events is committed, with each event's `seq`,
    taken from the journal inside the batch's transaction (other servers may write it too: see
    `effectd.journal.shared`). Several appends that arrive while a commit is under way are written
    together in the next transaction (group commit).
    """

    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection, next_seq: int) -> None:
        self.path = path
        self._db = writer
        self._read = reader
        self._last_seq = next_seq - 1  # the last seq this writer knows of (its own, or seen in a batch)
        self._send: MemoryObjectSendStream[_Pending]
        self._recv: MemoryObjectReceiveStream[_Pending]
        self._send, self._recv = anyio.create_memory_object_stream[_Pending](math.inf)
        self._states: dict[str, EffectState] = {}  # of the effects not yet terminal, as committed
        self._flow_rows: dict[str, dict[str, Any]] = {}
        self.batches = 0
        self.in_flight = 0
        self._writing = anyio.Lock()  # a batch, or maintenance (`exclusive`), on the writer's connection

    @classmethod
    @asynccontextmanager
    async def open(cls, path: Path) -> AsyncIterator[Journal]:
        """Opens (creating and migrating) the database and runs the writer until the context ends."""
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await _connect(path)
        try:
            await migrate(writer)
            reader = await _connect(path)
            try:
                rows = await writer.execute_fetchall("SELECT COALESCE(MAX(seq), 0) FROM events")
                journal = cls(path, writer, reader, next(iter(rows))[0] + 1)
                async with anyio.create_task_group() as tg:
                    await journal._start(tg)
                    try:
                        yield journal
                    finally:
                        journal._send.close()
            finally:
                await reader.close()
        finally:
            await writer.close()

    async def _start(self, tg: TaskGroup) -> None:
        tg.start_soon(self._write_batches)

    # --- writing ---------------------------------------------------------------------------------

    async def commit(self, events: Sequence[Event]) -> list[Event]:
        """Writes events and returns them once they are durable, each with its `seq` (a RUN_CREATED
        that another server wrote first is left out)."""
        pending = _Pending([replace(e, ts=e.ts or now_iso()) for e in events], anyio.Event())
        self.in_flight += 1  # until the caller has its answer: committed events are then applied
        try:
            self._send.send_nowait(pending)
            with anyio.CancelScope(shield=True):
                await pending.done.wait()
        finally:
            self.in_flight -= 1
        if pending.error is not None:
            raise pending.error
        return pending.events

    async def append(self, *events: Event) -> list[Event]:
        """Commits events; returns them with their `seq`."""
        return await self.commit(events)

    async def _write_batches(self) -> None:
        async with self._recv:
            async for first in self._recv:
                batch = [first]
                while len(batch) < _BATCH_LIMIT:
                    try:
                        batch.append(self._recv.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                error: BaseException | None = None
                try:
                    with anyio.CancelScope(shield=True):
                        try:
                            async with self._writing:
                                await self._write(await self._prepare(batch))
                        except Exception as exc:  # reported to every caller of the batch
                            error = exc
                            with suppress(Exception):
                                await self._db.rollback()
                finally:
                    for pending in batch:  # nobody waits forever on a batch, whatever happened to it
                        pending.error = pending.error or error
                        pending.done.set()

    async def _prepare(self, batch: list[_Pending]) -> list[Event]:
        """Opens the batch's transaction and gives its events their seqs, in order, after whatever
        other servers wrote (forgetting the cached states they changed); refuses reused keys."""
        head, changed_effects, changed_flows = await begin_batch(self._db, self._last_seq)
        for effect_id in changed_effects:
            self._states.pop(effect_id, None)
        for flow_id in changed_flows:
            self._flow_rows.pop(flow_id, None)
        self._last_seq = head
        for pending, (events, refused) in zip(batch, await screen(self._db, [p.events for p in batch]), strict=True):
            pending.error = refused
            pending.events = [replace(event, seq=head + 1 + n) for n, event in enumerate(events)]
            head += len(events)
        return [event for pending in batch for event in pending.events]

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
        await self._db.executemany(
            _INSERT_EVENT,
            [(e.seq, e.ts, e.run_id, e.effect_id, e.type, json.dumps(e.data, separators=(",", ":"))) for e in events],
        )
        if runs:
            await self._db.executemany("INSERT OR IGNORE INTO runs (run_id, created_at) VALUES (?, ?)", runs)
        if effects:
            rows = [state.to_row() for state in effects.values()]
            await self._db.executemany(_UPSERT_EFFECT, [tuple(r[c] for c in EFFECT_COLUMNS) for r in rows])
        if flows:
            await self._db.executemany(_UPSERT_FLOW, [tuple(r[c] for c in FLOW_COLUMNS) for r in flows.values()])
        if rows_of_budgets := [tuple(r[c] for c in BUDGET_COLUMNS) for r in budgets.values() if r is not None]:
            await self._db.executemany(UPSERT_BUDGET, rows_of_budgets)
        await self._db.commit()
        self.batches += 1
        self._last_seq = events[-1].seq if events else self._last_seq
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
        rows = await self._db.execute_fetchall("SELECT * FROM effects WHERE effect_id = ?", (effect_id,))
        return EffectState.from_row(dict(next(iter(rows)))) if rows else None

    async def _budget_row(self, key: tuple[str, str]) -> dict[str, Any] | None:
        rows = await self._db.execute_fetchall("SELECT * FROM budgets WHERE kind = ? AND name = ?", key)
        return dict(next(iter(rows))) if rows else None

    async def _flow_row(self, flow_id: str) -> dict[str, Any] | None:
        if flow_id in self._flow_rows:
            return self._flow_rows[flow_id]
        rows = await self._db.execute_fetchall("SELECT * FROM flows WHERE flow_id = ?", (flow_id,))
        return dict(next(iter(rows))) if rows else None

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[aiosqlite.Connection]:
        """The writer's connection, with no batch under way until the context ends (maintenance such as
        `effectd prune`; the caller commits what it changes)."""
        async with self._writing:
            yield self._db

    # --- reading ---------------------------------------------------------------------------------

    async def fetch(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[dict[str, Any]]:
        rows = await self._read.execute_fetchall(sql, params if isinstance(params, Mapping) else tuple(params))
        return [dict(row) for row in rows]

    async def effect(self, effect_id: str) -> dict[str, Any] | None:
        rows = await self.fetch("SELECT * FROM effects WHERE effect_id = ?", (effect_id,))
        return rows[0] if rows else None

    async def flow(self, flow_id: str) -> dict[str, Any] | None:
        rows = await self.fetch("SELECT * FROM flows WHERE flow_id = ?", (flow_id,))
        return rows[0] if rows else None

    async def run_exists(self, run_id: str) -> bool:
        return bool(await self.fetch("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)))

    async def by_key(self, run_id: str, key: str) -> dict[str, Any] | None:
        rows = await self.fetch("SELECT * FROM effects WHERE run_id = ? AND key = ?", (run_id, key))
        return rows[0] if rows else None

    async def effects(self, effect_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The rows of the effects that exist among `effect_ids`, by id (a few queries for any number)."""
        ids = list(dict.fromkeys(effect_ids))
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = await self.fetch(f"SELECT * FROM effects WHERE effect_id IN ({', '.join('?' * len(chunk))})", chunk)
            found.update((row["effect_id"], row) for row in rows)
        return found

    async def group_ids(self, group: str) -> list[str]:
        rows = await self.fetch("SELECT effect_id FROM effects WHERE group_name = ? ORDER BY effect_id", (group,))
        return [row["effect_id"] for row in rows]

    async def list_effects(
        self, run_id: str | None, group: str | None, statuses: Sequence[str] | None, limit: int
    ) -> list[dict[str, Any]]:
        where, params = [], []
        if run_id is not None:
            where.append("run_id = ?")
            params.append(run_id)
        if group is not None:
            where.append("group_name = ?")
            params.append(group)
        if statuses:
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            params.extend(statuses)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        return await self.fetch(f"SELECT * FROM effects {clause} ORDER BY effect_id DESC LIMIT ?", [*params, limit])

    async def active_effects(self) -> list[dict[str, Any]]:
        return await self.fetch(
            "SELECT * FROM effects WHERE status IN ('pending', 'queued', 'running') ORDER BY effect_id"
        )

    async def effect_ids(self, owners: Collection[str] | None = None) -> list[str]:
        """The id of every recorded effect, whatever its state (recovery kills what any of them left);
        with `owners`, only those these servers dispatched ("" for effects from before sessions)."""
        rows = await self.fetch("SELECT effect_id, owner FROM effects")
        return [row["effect_id"] for row in rows if owners is None or (row["owner"] or "") in owners]

    async def active_flows(self) -> list[dict[str, Any]]:
        return await self.fetch("SELECT * FROM flows WHERE finished_at IS NULL ORDER BY flow_id")

    async def events(self, *, run_id: str | None = None, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        if run_id is None:
            return await self.fetch("SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit))
        return await self.fetch(
            "SELECT * FROM events WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?", (run_id, after, limit)
        )

    async def runs_overview(self, limit: int) -> list[dict[str, Any]]:
        """Runs newest first, each with its number of effects and of active ones."""
        return await self.fetch(
            "SELECT r.run_id, r.created_at, COUNT(e.effect_id) AS effects, "
            "SUM(e.status IN ('pending', 'queued', 'running')) AS active "
            "FROM runs r LEFT JOIN effects e ON e.run_id = r.run_id "
            "GROUP BY r.run_id ORDER BY r.run_id DESC LIMIT ?",
            (limit,),
        )

    async def groups_overview(self, run_id: str | None, limit: int) -> list[dict[str, Any]]:
        """Groups, the one with the newest effect first, each with its counts."""
        where, params = (
            ("WHERE group_name IS NOT NULL AND run_id = ?", [run_id])
            if run_id
            else ("WHERE group_name IS NOT NULL", [])
        )
        rows = await self.fetch(
            "SELECT group_name, MAX(run_id) AS run_id, MAX(flow_id) AS flow_id, COUNT(*) AS effects, "
            "MIN(created_at) AS created_at, MAX(effect_id) AS latest, "
            "SUM(status IN ('pending', 'queued', 'running')) AS active, SUM(status = 'failed') AS failed "
            f"FROM effects {where} GROUP BY group_name ORDER BY latest DESC LIMIT ?",
            [*params, limit],
        )
        return [
            {
                "group": row["group_name"],
                "run_id": row["run_id"],
                "flow_id": row["flow_id"],
                "effects": row["effects"],
                "active": row["active"],
                "failed": row["failed"],
                "created_at": row["created_at"],
            }
            for row in rows
        ]

    async def flows_page(self, run_id: str | None, limit: int) -> list[dict[str, Any]]:
        """Flow rows newest first, of one run or of all."""
        if run_id:
            return await self.fetch(
                "SELECT * FROM flows WHERE run_id = ? ORDER BY flow_id DESC LIMIT ?", (run_id, limit)
            )
        return await self.fetch("SELECT * FROM flows ORDER BY flow_id DESC LIMIT ?", (limit,))

    # --- control requests from other processes (see `effectd.journal.requests`) ------------------

    async def write_aside(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Runs one write on the second connection and commits it (the writer's connection may be inside
        a batch's transaction); returns how many rows it changed."""
        cursor = await self._read.execute(sql, tuple(params))
        await self._read.commit()
        return cursor.rowcount


async def replay_projection(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Folds every event of the database at `path` anew; returns the projection it gives, table by table."""
    async with aiosqlite.connect(f"file:{path}?mode=ro", uri=True) as db:
        db.row_factory = aiosqlite.Row
        effects: dict[str, EffectState] = {}
        flows: dict[str, dict[str, Any]] = {}
        runs: dict[str, dict[str, Any]] = {}
        budgets: dict[tuple[str, str], dict[str, Any] | None] = {}
        async with db.execute("SELECT * FROM events ORDER BY seq") as cursor:
            async for row in cursor:
                event = Event(
                    row["type"], row["run_id"], row["effect_id"], json.loads(row["data"]), row["ts"], row["seq"]
                )
                if event.type == "RUN_CREATED" and event.run_id:
                    runs.setdefault(event.run_id, {"run_id": event.run_id, "created_at": event.data["created_at"]})
                elif event.effect_id:
                    folded = fold_effect(effects.get(event.effect_id), event)
                    if folded is not None:
                        effects[event.effect_id] = folded
                elif event.type.startswith("FLOW_"):
                    flow = fold_flow(flows.get(event.data["flow_id"]), event)
                    if flow is not None:
                        flows[event.data["flow_id"]] = flow
                elif event.type in BUDGET_EVENTS:
                    budgets[budget_key(event)] = fold_budget(budgets.get(budget_key(event)), event)
    return {
        "effects": sorted((state.to_row() for state in effects.values()), key=lambda r: r["effect_id"]),
        "flows": sorted(flows.values(), key=lambda r: r["flow_id"]),
        "runs": sorted(runs.values(), key=lambda r: r["run_id"]),
        "budgets": sorted((r for r in budgets.values() if r is not None), key=lambda r: (r["kind"], r["name"])),
    }
