"""The journal database: one batching writer (group commit), a read connection, and the queries."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
from anyio.abc import TaskGroup

from effectd.errors import JournalUnusableError
from effectd.journal.budgets import BUDGET_EVENTS, budget_key, fold_budget
from effectd.journal.migrations import migrate
from effectd.journal.projection import EffectState, Event, fold_effect, fold_flow
from effectd.journal.usable import opening_error, prepare_journal_file
from effectd.journal.writer import Retry, Writer


async def _connect(path: Path, *, readonly: bool = False, busy_timeout_s: float = 10.0) -> aiosqlite.Connection:
    uri = f"file:{path}?mode=ro" if readonly else str(path)
    db = await aiosqlite.connect(uri, uri=readonly)
    try:  # a connection left open keeps its thread, and the process, alive
        db.row_factory = aiosqlite.Row
        await db.execute(f"PRAGMA busy_timeout = {max(0, round(busy_timeout_s * 1000))}")
        if not readonly:
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
    except BaseException:
        with anyio.CancelScope(shield=True):
            await db.close()
        raise
    return db


async def _optimize(db: aiosqlite.Connection) -> None:
    """At close, SQLite's own upkeep of the planner's statistics (`PRAGMA optimize`, each ANALYZE bounded by
    `analysis_limit`), so that a journal that grew keeps choosing the right index; a fault skips it."""
    with anyio.CancelScope(shield=True), suppress(sqlite3.Error):
        await db.execute("PRAGMA analysis_limit = 1000")
        await db.execute("PRAGMA optimize")


def filter_terms(
    run_id: str | None, group: str | None, statuses: Sequence[str] | None, group_column: str = "group_name"
) -> tuple[list[str], list[Any]]:
    """The conditions (with their parameters) of a run, group and status filter, the group in `group_column`."""
    where: list[str] = []
    params: list[Any] = []
    if run_id is not None:
        where.append("run_id = ?")
        params.append(run_id)
    if group is not None:
        where.append(f"{group_column} = ?")
        params.append(group)
    if statuses:
        where.append(f"status IN ({', '.join('?' * len(statuses))})")
        params.extend(statuses)
    return where, params


def effect_filter(run_id: str | None, group: str | None, statuses: Sequence[str] | None) -> tuple[str, list[Any]]:
    """The WHERE clause (with its parameters) of a run, group and status filter on the `effects` table."""
    where, params = filter_terms(run_id, group, statuses)
    return (f"WHERE {' AND '.join(where)}" if where else ""), params


class Journal:
    """Appends events in order and keeps the projection tables in step, one transaction per batch.

    `append` returns once the batch that holds its events is committed, with each event's `seq`,
    taken from the journal inside the batch's transaction (other servers may write it too: see
    `effectd.journal.peer_writes`). Several appends that arrive while a commit is under way are written
    together in the next transaction (group commit). Through a journal fault (disk full, a lock held
    elsewhere) an `append` waits until the journal takes it; a `try_append` is refused (see `writer.py`).
    """

    def __init__(
        self,
        path: Path,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        next_seq: int,
        retry: Retry | None = None,
    ) -> None:
        self.path = path
        self._read = reader
        self._writer = Writer(path, writer, next_seq, retry)
        self.append = self._writer.append
        self.try_append = self._writer.try_append
        self.check_writable = self._writer.check_writable
        self.wait_clear = self._writer.wait_clear
        self.give_up = self._writer.give_up

    @classmethod
    @asynccontextmanager
    async def open(
        cls, path: Path, *, busy_timeout_s: float = 10.0, retry: Retry | None = None
    ) -> AsyncIterator[Journal]:
        """Opens (creating and migrating) the database and runs the writer until the context ends.

        Raises JournalUnusableError or JournalUnavailableError, naming the file and the problem, when
        the file cannot be opened, migrated or read. A new journal's files are created mode 0600."""
        async with AsyncExitStack() as stack:
            try:
                prepare_journal_file(path)
                writer = await _connect(path, busy_timeout_s=busy_timeout_s)
                stack.push_async_callback(writer.close)
                await migrate(writer)
                reader = await _connect(path, busy_timeout_s=busy_timeout_s)
                stack.push_async_callback(reader.close)
                stack.push_async_callback(_optimize, reader)
                rows = await writer.execute_fetchall("SELECT COALESCE(MAX(seq), 0) FROM events")
            except (sqlite3.Error, OSError, JournalUnusableError) as exc:
                raise opening_error(path, exc) from None
            journal = cls(path, writer, reader, next(iter(rows))[0] + 1, retry)
            async with anyio.create_task_group() as tg:
                await journal._start(tg)
                try:
                    yield journal
                finally:
                    journal._writer.close()

    async def _start(self, tg: TaskGroup) -> None:
        tg.start_soon(self._writer.run)

    @property
    def batches(self) -> int:
        """The transactions committed so far."""
        return self._writer.batches

    @property
    def in_flight(self) -> int:
        """Appends not yet answered."""
        return self._writer.in_flight

    @property
    def held_back(self) -> int:
        """Events a journal fault keeps from being committed, until the journal takes them."""
        return self._writer.held_back

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[aiosqlite.Connection]:
        """The writer's connection, with no batch under way until the context ends (maintenance such as
        `effectd prune`; the caller commits what it changes)."""
        async with self._writer.writing:
            yield self._writer.db

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
        """The newest `limit` effects that match. Several statuses are read one by one, each in the order of
        its index (`(status, effect_id)`), and merged: one query over `status IN (...)` would sort every
        matching effect of the history to return the newest few."""
        if statuses and len(set(statuses)) > 1:
            rows = [
                row
                for status in sorted(set(statuses))
                for row in await self.list_effects(run_id, group, [status], limit)
            ]
            return sorted(rows, key=lambda row: str(row["effect_id"]), reverse=True)[:limit]
        clause, params = effect_filter(run_id, group, statuses)
        # A status alone: its index gives its newest effects in order (the statistics, which see mostly
        # finished effects, would have SQLite walk the whole history for a rare one such as `running`).
        hint = "INDEXED BY effects_by_status" if statuses and run_id is None and group is None else ""
        return await self.fetch(
            f"SELECT * FROM effects {hint} {clause} ORDER BY effect_id DESC LIMIT ?", [*params, limit]
        )

    async def active_effects(self) -> list[dict[str, Any]]:
        """The effects not yet ended, by id, through the partial index that holds only them (migration
        `m260_issue26_scale`): a start reads what is live, not the history."""
        return await self.fetch(
            "SELECT * FROM effects INDEXED BY effects_live WHERE status IN ('pending', 'queued', 'running') "
            "ORDER BY effect_id"
        )

    async def effect_ids(self, owners: Collection[str] | None = None) -> list[str]:
        """The id of every recorded effect, whatever its state (recovery kills what any of them left, when
        its runner cannot say which effects left something); with `owners`, only those these servers
        dispatched ("" for effects from before sessions). Reads the whole history: see `known_effect_ids`."""
        rows = await self.fetch("SELECT effect_id, owner FROM effects")
        return [row["effect_id"] for row in rows if owners is None or (row["owner"] or "") in owners]

    async def known_effect_ids(self, candidates: Iterable[str], owners: Collection[str] | None = None) -> list[str]:
        """Those of `candidates` that are recorded effects (of `owners`, as `effect_ids`), by their primary
        key: what recovery reads when the runner found which effects left something alive."""
        rows = await self.effects(candidates)
        return sorted(i for i, row in rows.items() if owners is None or (row["owner"] or "") in owners)

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

    # --- control requests from other processes (see `effectd.journal.control`) ------------------

    async def write_aside(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Runs one write on the second connection and commits it (the writer's connection may be inside
        a batch's transaction); returns how many rows it changed."""
        try:
            cursor = await self._read.execute(sql, tuple(params))
            await self._read.commit()
        except BaseException:  # a refused write must not leave the read connection in a stale transaction
            with anyio.CancelScope(shield=True), suppress(Exception):
                await self._read.rollback()
            raise
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
