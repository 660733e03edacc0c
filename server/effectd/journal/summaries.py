"""The summary of every effect a `list_effects` filter matches, computed in one SQL query (not only over
the page returned): counts by status, and the cost and tokens the harness effects reported."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from effectd.harness.usage import MAX_RUN_COST_USD, MAX_RUN_TOKENS
from effectd.journal.store import Journal, effect_filter


def _total(path: str, cast: str, bound: float) -> str:
    """The sum, over harness effects, of the number at `path` in their result when it lies from 0 to `bound`
    (anything else counts 0: a negative or absurd figure must not lower or swamp the sum). A result SQLite
    cannot read as JSON (NaN written by an older effectd) counts 0 too, rather than failing the query."""
    value = f"CAST(json_extract(result, '{path}') AS {cast})"
    return (
        f"TOTAL(CASE WHEN kind = 'harness' AND json_valid(result) AND {value} BETWEEN 0 AND {bound} THEN {value} END)"
    )


_SUMMARY = (
    f"SELECT status, COUNT(*) AS n, {_total('$.cost_usd', 'REAL', MAX_RUN_COST_USD)} AS cost_usd, "
    f"{_total('$.usage.input_tokens', 'INTEGER', MAX_RUN_TOKENS)} AS input_tokens, "
    f"{_total('$.usage.output_tokens', 'INTEGER', MAX_RUN_TOKENS)} AS output_tokens "
    "FROM effects {where} GROUP BY status"
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
