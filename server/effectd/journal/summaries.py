"""The summary of every effect a `list_effects` filter matches, computed in one SQL query (not only over
the page returned): counts by status, and the cost and tokens the harness effects reported."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from effectd.journal.store import Journal, effect_filter


def _total(path: str, cast: str) -> str:
    """The sum, over harness effects, of the number at `path` in their result (anything else counts 0)."""
    return f"TOTAL(CASE WHEN kind = 'harness' THEN CAST(json_extract(result, '{path}') AS {cast}) END)"


_SUMMARY = (
    f"SELECT status, COUNT(*) AS n, {_total('$.cost_usd', 'REAL')} AS cost_usd, "
    f"{_total('$.usage.input_tokens', 'INTEGER')} AS input_tokens, "
    f"{_total('$.usage.output_tokens', 'INTEGER')} AS output_tokens FROM effects {{where}} GROUP BY status"
)


async def summarize_effects(
    journal: Journal, run_id: str | None, group: str | None, statuses: Sequence[str] | None
) -> dict[str, Any]:
    """`{"count", "by_status": {status: n}, "cost_usd", "tokens": {"input_tokens", "output_tokens"}}` over
    every effect matching the filter."""
    where, params = effect_filter(run_id, group, statuses)
    rows = await journal.fetch(_SUMMARY.format(where=where), params)
    return {
        "count": sum(int(row["n"]) for row in rows),
        "by_status": {row["status"]: int(row["n"]) for row in rows},
        "cost_usd": round(sum(float(row["cost_usd"]) for row in rows), 6),
        "tokens": {
            "input_tokens": sum(int(row["input_tokens"]) for row in rows),
            "output_tokens": sum(int(row["output_tokens"]) for row in rows),
        },
    }
