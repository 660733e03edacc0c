"""The journal's approvals (issue 25): each is an `APPROVAL_REQUESTED` event, then one `APPROVAL_ANSWERED`."""

from __future__ import annotations

from typing import Any

from effectd.journal.store import Journal

REQUESTED, ANSWERED = "APPROVAL_REQUESTED", "APPROVAL_ANSWERED"


async def approval_events(journal: Journal) -> list[dict[str, Any]]:
    """Every approval event (`seq`, `type`, `data`), oldest first."""
    return await journal.fetch(
        "SELECT seq, type, data FROM events WHERE type IN (?, ?) ORDER BY seq", (REQUESTED, ANSWERED)
    )
