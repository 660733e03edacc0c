"""The journal's approvals (issue 25): each is an `APPROVAL_REQUESTED` event, then one `APPROVAL_ANSWERED`.

The server reads them back at start (`approval_events`), and so does the command line (`JournalReader.approvals`,
which has no server to ask): both fold the events into approvals the same way (`fold`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from effectd.journal.store import Journal

REQUESTED, ANSWERED = "APPROVAL_REQUESTED", "APPROVAL_ANSWERED"
# Literal types, as in the partial index `events_approvals` (migration m260_issue26_scale), which SQLite uses
# only for a query with the same terms: a start reads the approvals, not every event of the history.
APPROVAL_EVENTS = (
    "SELECT seq, type, data FROM events WHERE type IN ('APPROVAL_REQUESTED', 'APPROVAL_ANSWERED') ORDER BY seq"
)


async def approval_events(journal: Journal) -> list[dict[str, Any]]:
    """Every approval event (`seq`, `type`, `data`), oldest first."""
    return await journal.fetch(APPROVAL_EVENTS)


def fold(rows: Iterable[Mapping[str, Any]]) -> dict[str, tuple[int, dict[str, Any]]]:
    """The approvals of these events (oldest first), by id: the seq of each one's request, and the approval as
    its answer left it. An answer whose request is not there (pruned with its effect) is skipped."""
    found: dict[str, tuple[int, dict[str, Any]]] = {}
    for row in rows:
        data = json.loads(row["data"])
        if row["type"] == REQUESTED:
            found[data["approval_id"]] = (int(row["seq"]), data)
        elif (known := found.get(data["approval_id"])) is not None:
            known[1].update(data)
    return found
