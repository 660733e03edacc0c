"""The other servers on a journal, as one server sees them: the `servers` table, the journal's change
counter, the events written since a seq, and cancels and approvals' answers forwarded to another server.

All of it runs on a connection of its own, so watching the journal (every 0.1 s) never waits behind
the writer's batches or the tools' reads.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from effectd.journal.projection import Event
from effectd.model.records import now_iso

# The control requests a server answers: those for effects it owns or took over, and those naming no
# effect at all (any server may answer those `unknown`).
OPEN_REQUESTS = (
    "SELECT c.* FROM control c LEFT JOIN effects e ON e.effect_id = c.effect_id "
    "WHERE c.answered_at IS NULL AND (e.effect_id IS NULL OR COALESCE(e.owner, '') = :me "
    "OR COALESCE(e.owner, '') IN (SELECT server_id FROM servers WHERE adopted_by = :me)) ORDER BY c.id"
)


class Peers:
    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path

    @classmethod
    @asynccontextmanager
    async def open(cls, path: Path) -> AsyncIterator[Peers]:
        db = await aiosqlite.connect(str(path))
        db.row_factory = aiosqlite.Row
        try:
            await db.execute("PRAGMA busy_timeout = 10000")
            yield cls(db, path)
        finally:
            await db.close()

    async def _rows(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        return [dict(row) for row in await self._db.execute_fetchall(sql, params)]

    # --- the servers table -------------------------------------------------------------------------

    async def register(self, server_id: str, pid: int, pid_start: int | None, host: str) -> None:
        await self._db.execute(
            "INSERT INTO servers (server_id, pid, pid_start, host, started_at) VALUES (?, ?, ?, ?, ?)",
            (server_id, pid, pid_start, host, now_iso()),
        )
        await self._db.commit()

    async def stopped(self, server_id: str) -> None:
        """This server stops: whatever it leaves waiting (`--keep-queued`) is the next server's."""
        await self._db.execute("UPDATE servers SET stopped_at = ? WHERE server_id = ?", (now_iso(), server_id))
        await self._db.commit()

    async def servers(self) -> list[dict[str, Any]]:
        return await self._rows("SELECT * FROM servers ORDER BY started_at")

    async def unadopted(self) -> list[dict[str, Any]]:
        """The servers no server took over: the live ones, and those gone since the last take-over."""
        return await self._rows("SELECT * FROM servers WHERE adopted_by IS NULL")

    async def server(self, server_id: str) -> dict[str, Any] | None:
        rows = await self._rows("SELECT * FROM servers WHERE server_id = ?", (server_id,))
        return rows[0] if rows else None

    async def adopt(self, me: str, gone: Iterable[str]) -> set[str]:
        """Takes over the servers of `gone` that no other server took first (one transaction: two
        servers starting together cannot both take one), with whatever they had taken over. Returns
        the ids of the servers whose effects `me` now runs, `me` included."""
        gone = [server_id for server_id in gone if server_id != me]
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            taken = []
            for server_id in gone:
                cursor = await self._db.execute(
                    "UPDATE servers SET adopted_by = ? WHERE server_id = ? AND adopted_by IS NULL", (me, server_id)
                )
                if cursor.rowcount:
                    taken.append(server_id)
            for server_id in taken:
                await self._db.execute("UPDATE servers SET adopted_by = ? WHERE adopted_by = ?", (me, server_id))
            await self._db.commit()
        except BaseException:
            await self._db.rollback()
            raise
        rows = await self._rows("SELECT server_id FROM servers WHERE adopted_by = ?", (me,))
        return {me, *(row["server_id"] for row in rows)}

    # --- watching the journal ----------------------------------------------------------------------

    async def data_version(self) -> int:
        """SQLite's counter of commits made by other connections (any server's, this one's writer too)."""
        rows = await self._db.execute_fetchall("PRAGMA data_version")
        return int(next(iter(rows))[0])

    async def head(self) -> int:
        rows = await self._db.execute_fetchall("SELECT COALESCE(MAX(seq), 0) FROM events")
        return int(next(iter(rows))[0])

    async def events_after(
        self, seq: int, limit: int, wanted: Callable[[str, str | None], bool]
    ) -> tuple[int, int, list[Event]]:
        """Reads the events committed after `seq`, at most `limit`; returns the last seq read, how many
        were read, and the events that `wanted(type, effect_id)` keeps, decoded. The rest is never
        decoded: most events a server reads back are its own."""
        rows = list(
            await self._db.execute_fetchall("SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))
        )
        events = [
            Event(row["type"], row["run_id"], row["effect_id"], json.loads(row["data"]), row["ts"], row["seq"])
            for row in rows
            if wanted(row["type"], row["effect_id"])
        ]
        return (rows[-1]["seq"] if rows else seq), len(rows), events

    # --- requests forwarded to another server -------------------------------------------------------

    async def request_cancel(
        self, effect_id: str, message: str | None, grace_s: float | None, reason: str, by: str
    ) -> int:
        """Asks the server that runs the effect to cancel it (as `effectd cancel` does, but with the
        cancel's own `reason`, in `args`: a race's losers are `superseded`, and the server `by` that
        asks and waits for it); returns the request id."""
        args = json.dumps({"reason": reason, "by": by})
        cursor = await self._db.execute(
            "INSERT INTO control (effect_id, action, reason, requested_at, grace_s, args) "
            "VALUES (?, 'cancel', ?, ?, ?, ?)",
            (effect_id, message, now_iso(), grace_s, args),
        )
        await self._db.commit()
        return int(cursor.lastrowid or 0)

    async def request_approval(self, effect_id: str, answer: dict[str, Any], by: str) -> int:
        """Asks the server whose sub-agent asked for an approval to give it `answer` (its `approval_id`,
        `decision`, `message`, `decided_by`, and any `updated_input`), for the server `by`, which waits for
        it; returns the request id. The approval comes back in the request's `result`."""
        cursor = await self._db.execute(
            "INSERT INTO control (effect_id, action, requested_at, args) VALUES (?, 'approve', ?, ?)",
            (effect_id, now_iso(), json.dumps({**answer, "by": by})),
        )
        await self._db.commit()
        return int(cursor.lastrowid or 0)

    async def result(self, request_id: int) -> dict[str, Any] | None:
        """What an answered request came to (an approval's answer), or None while there is none."""
        rows = await self._rows("SELECT result FROM control WHERE id = ?", (request_id,))
        return json.loads(rows[0]["result"]) if rows and rows[0]["result"] else None

    async def answer(self, request_id: int) -> str | None:
        rows = await self._rows("SELECT answer FROM control WHERE id = ?", (request_id,))
        return rows[0]["answer"] if rows else None

    async def withdraw(self, request_id: int) -> bool:
        """Withdraws a request its server has not answered: it is then never carried out (the server's
        answer is a write conditional on there being none, so exactly one of the two counts). True when
        withdrawn; False when the server answered first (the request then stands)."""
        cursor = await self._db.execute(
            "UPDATE control SET answered_at = ?, answer = 'withdrawn' WHERE id = ? AND answered_at IS NULL",
            (now_iso(), request_id),
        )
        await self._db.commit()
        return cursor.rowcount == 1
