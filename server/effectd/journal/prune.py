"""The queries of `effectd prune`: which effects ended before a moment (and may lose their output), which
effects and flows may leave the journal with them, the removal itself, and the compaction after it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from effectd.journal.store import Journal

_TERMINAL = "('succeeded', 'failed', 'cancelled', 'skipped')"
_CHUNK = 500


async def ended_before(journal: Journal, before: str) -> list[dict[str, Any]]:
    """The effects that ended before `before` (ISO time), oldest first, except the steps of a flow still
    running (a later step may still read their output). Running and waiting effects are never among them."""
    return await journal.fetch(
        "SELECT e.effect_id, e.run_id, e.output_pruned FROM effects e LEFT JOIN flows f ON f.flow_id = e.flow_id "
        f"WHERE e.status IN {_TERMINAL} AND e.finished_at < ? AND (e.flow_id IS NULL OR f.finished_at IS NOT NULL) "
        "ORDER BY e.effect_id",
        (before,),
    )


async def active_count(journal: Journal) -> int:
    rows = await journal.fetch(f"SELECT COUNT(*) AS n FROM effects WHERE status NOT IN {_TERMINAL}")
    return int(rows[0]["n"])


async def forgettable(journal: Journal, before: str) -> tuple[list[str], list[str]]:
    """The effects and flows that may leave the journal: effects that ended before `before`, and flows that
    finished before it with every step ended. A flow's steps leave only with their flow."""
    flows = await journal.fetch(
        "SELECT flow_id FROM flows WHERE finished_at IS NOT NULL AND finished_at < ? AND NOT EXISTS "
        f"(SELECT 1 FROM effects e WHERE e.flow_id = flows.flow_id AND e.status NOT IN {_TERMINAL}) ORDER BY flow_id",
        (before,),
    )
    flow_ids = [row["flow_id"] for row in flows]
    leaving = set(flow_ids)
    effects = await journal.fetch(
        f"SELECT effect_id, flow_id FROM effects WHERE status IN {_TERMINAL} AND finished_at < ? ORDER BY effect_id",
        (before,),
    )
    effect_ids = [row["effect_id"] for row in effects if row["flow_id"] is None or row["flow_id"] in leaving]
    return effect_ids, flow_ids


def _marks(chunk: Sequence[str]) -> str:
    return ", ".join("?" * len(chunk))


async def forget(journal: Journal, effect_ids: Sequence[str], flow_ids: Sequence[str]) -> None:
    """Removes the effects' and flows' events and rows, in one transaction between the writer's batches."""
    async with journal.exclusive() as db:
        try:
            for start in range(0, len(effect_ids), _CHUNK):
                chunk = list(effect_ids[start : start + _CHUNK])
                await db.execute(f"DELETE FROM events WHERE effect_id IN ({_marks(chunk)})", chunk)
                await db.execute(f"DELETE FROM effects WHERE effect_id IN ({_marks(chunk)})", chunk)
            for start in range(0, len(flow_ids), _CHUNK):
                chunk = list(flow_ids[start : start + _CHUNK])
                await db.execute(
                    "DELETE FROM events WHERE effect_id IS NULL AND type IN ('FLOW_REQUESTED', 'FLOW_COMPLETED') "
                    f"AND json_extract(data, '$.flow_id') IN ({_marks(chunk)})",
                    chunk,
                )
                await db.execute(f"DELETE FROM flows WHERE flow_id IN ({_marks(chunk)})", chunk)
            await db.commit()
        except BaseException:
            await db.rollback()
            raise


async def compact(journal: Journal) -> None:
    """Rewrites the database without the free pages (VACUUM) and folds the write-ahead log back into it,
    so the file shrinks."""
    async with journal.exclusive() as db:
        await db.execute("VACUUM")
        await db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
