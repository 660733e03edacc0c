"""The server's side of the `control` table: requests from other processes (`effectd cancel`,
`effectd prune`), each carried out only within its window (`expires_at`)."""

from __future__ import annotations

import json
from typing import Any

from effectd.journal.peers import OPEN_REQUESTS
from effectd.journal.store import Journal
from effectd.model.records import now_iso


async def open_requests(journal: Journal, server_id: str | None = None) -> list[dict[str, Any]]:
    """The requests still to answer (with `server_id`, those that server is to answer: its effects' and
    those naming none); those past their window are answered `expired` first, never acted on."""
    now = now_iso()
    if server_id is None:
        requests = await journal.fetch("SELECT * FROM control WHERE answered_at IS NULL ORDER BY id")
    else:
        requests = await journal.fetch(OPEN_REQUESTS, {"me": server_id})
    expired = [r for r in requests if r["expires_at"] is not None and r["expires_at"] <= now]
    if expired:  # written only when there is one: an idle server's poll takes no write lock
        await journal.write_aside(
            "UPDATE control SET answered_at = ?, answer = 'expired' WHERE answered_at IS NULL AND expires_at <= ?",
            (now, now),
        )
    return [r for r in requests if r not in expired]


async def answer_request(journal: Journal, request_id: int, answer: str) -> bool:
    """Answers a request unless it was answered (or withdrawn) meanwhile or its window has passed: True
    when this answer is the one that counts, so the server may act on the request."""
    now = now_iso()
    changed = await journal.write_aside(
        "UPDATE control SET answered_at = ?, answer = ? WHERE id = ? AND answered_at IS NULL "
        "AND (expires_at IS NULL OR expires_at > ?)",
        (now, answer, request_id, now),
    )
    return changed == 1


async def request_result(journal: Journal, request_id: int, result: dict[str, Any]) -> None:
    """Stores what an answered request came to (JSON), for the process that asked."""
    await journal.write_aside("UPDATE control SET result = ? WHERE id = ?", (json.dumps(result), request_id))


async def server_row(journal: Journal, server_id: str) -> dict[str, Any] | None:
    """The `servers` row of `server_id` (the server that forwarded a request), or None."""
    rows = await journal.fetch("SELECT * FROM servers WHERE server_id = :id", {"id": server_id})
    return rows[0] if rows else None
