"""A small synchronous reader of a journal file, for programs that are not the server (the command line).

Every query opens the file read-only (`mode=ro`) for as long as it runs, so a reader never holds the
database between calls, sees what a live server committed since the last one, and never creates or
migrates a journal: a file that does not exist (yet) reads as empty. The one write is a control
request, which the live server that owns the journal answers.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from effectd.journal.approvals import APPROVAL_EVENTS, fold
from effectd.journal.usable import opening_error
from effectd.model.records import format_iso, now_iso

_BUSY_TIMEOUT_S = 10.0


class JournalReader:
    """Queries on the journal at `path`: effect and flow rows, events, approvals, control answers (and control
    requests)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _connect(self, mode: str) -> sqlite3.Connection:
        # A URI, so that `ro` and `rw` never create the file; as_uri() quotes a path's `?`, `#` and `%`.
        return sqlite3.connect(f"{self.path.absolute().as_uri()}?mode={mode}", uri=True, timeout=_BUSY_TIMEOUT_S)

    def _rows(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        try:
            with closing(self._connect("ro")) as conn:
                conn.row_factory = sqlite3.Row
                return [dict(row) for row in conn.execute(sql, params).fetchall()]
        except sqlite3.Error as exc:
            raise opening_error(self.path, exc) from None

    def effect(self, effect_id: str) -> dict[str, Any] | None:
        """The effect's projection row, or None when the journal has no such effect."""
        rows = self._rows("SELECT * FROM effects WHERE effect_id = ?", effect_id)
        return rows[0] if rows else None

    def effects(
        self,
        *,
        run_id: str | None = None,
        group: str | None = None,
        status: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Effect rows, newest first, of one run, group and status when given; at most `limit` (None: all)."""
        where, params = [], []
        for column, value in (("run_id", run_id), ("group_name", group), ("status", status)):
            if value:
                where.append(f"{column} = ?")
                params.append(value)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        return self._rows(
            f"SELECT * FROM effects{clause} ORDER BY effect_id DESC LIMIT ?", *params, -1 if limit is None else limit
        )

    def flow(self, flow_id: str) -> dict[str, Any] | None:
        """The flow's projection row (its `steps` as stored, a JSON text), or None."""
        rows = self._rows("SELECT * FROM flows WHERE flow_id = ?", flow_id)
        return rows[0] if rows else None

    def events(self, after: int = 0, *, run_id: str | None = None) -> list[dict[str, Any]]:
        """The events with a `seq` above `after`, in order, of one run when given (`data` as stored, JSON text)."""
        if run_id:
            return self._rows("SELECT * FROM events WHERE run_id = ? AND seq > ? ORDER BY seq", run_id, after)
        return self._rows("SELECT * FROM events WHERE seq > ? ORDER BY seq", after)

    def event_count(self) -> int:
        """How many events the journal holds."""
        rows = self._rows("SELECT COUNT(*) AS n FROM events")
        return int(rows[0]["n"]) if rows else 0

    def approvals(
        self,
        *,
        run_id: str | None = None,
        group: str | None = None,
        effect_id: str | None = None,
        status: str | None = None,
    ) -> list[dict[str, Any]]:
        """The approvals (issue 25) that match, oldest first, as the server lists them (`list_approvals`)."""
        return [
            approval
            for _, approval in fold(self._rows(APPROVAL_EVENTS)).values()
            if (run_id is None or approval["run_id"] == run_id)
            and (group is None or approval["group"] == group)
            and (effect_id is None or approval["effect_id"] == effect_id)
            and (status is None or approval["status"] == status)
        ]

    def approval(self, approval_id: str) -> dict[str, Any] | None:
        """The approval as the journal has it now, or None when the journal has no such approval."""
        return next((a for a in self.approvals() if a["approval_id"] == approval_id), None)

    def servers(self) -> dict[str, dict[str, Any]]:
        """The servers that ever ran on the journal, by id (none for a journal from before sessions)."""
        try:
            return {row["server_id"]: row for row in self._rows("SELECT * FROM servers")}
        except sqlite3.OperationalError:  # no `servers` table yet
            return {}

    def control_answer(self, request_id: int) -> str | None:
        """The live server's answer to a control request, or None while it has not answered."""
        rows = self._rows("SELECT answer FROM control WHERE id = ?", request_id)
        return rows[0]["answer"] if rows else None

    def request_control(
        self,
        effect_id: str,
        action: str,
        reason: str | None = None,
        *,
        window_s: float = 10.0,
        args: dict[str, Any] | None = None,
    ) -> int:
        """Asks the live server that owns the journal to act on an effect (`cancel`; `approve`, with `args`:
        answer an approval its sub-agent asked for), or on the journal (`prune`, with `args`); returns the
        request's id.

        The server polls the `control` table and answers each request (see `control_answer`) within
        `window_s`; past it the request expires and is never carried out (see `expire_request`)."""
        requested = datetime.now(UTC)
        expires = requested + timedelta(seconds=window_s)
        try:
            with closing(self._connect("rw")) as conn, conn:
                cursor = conn.execute(
                    "INSERT INTO control (effect_id, action, reason, requested_at, expires_at, args) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        effect_id,
                        action,
                        reason,
                        format_iso(requested),
                        format_iso(expires),
                        None if args is None else json.dumps(args),
                    ),
                )
        except sqlite3.Error as exc:
            raise opening_error(self.path, exc) from None
        request_id = cursor.lastrowid
        if request_id is None:  # pragma: no cover - an INSERT into a rowid table always gives one
            raise RuntimeError("the control request was not recorded")
        return request_id

    def expire_request(self, request_id: int) -> str | None:
        """Withdraws a request no server has answered: it is then never carried out. Returns None when it
        is withdrawn, or the answer a server gave first (the request then stands)."""
        with closing(self._connect("rw")) as conn, conn:
            cursor = conn.execute(
                "UPDATE control SET answered_at = ?, answer = 'expired' WHERE id = ? AND answered_at IS NULL",
                (now_iso(), request_id),
            )
        if cursor.rowcount == 1:
            return None
        return self.control_answer(request_id)

    def control_result(self, request_id: int) -> dict[str, Any] | None:
        """What an answered request came to (an `effectd prune`'s report), or None while it runs."""
        rows = self._rows("SELECT result FROM control WHERE id = ?", request_id)
        return json.loads(rows[0]["result"]) if rows and rows[0]["result"] else None
