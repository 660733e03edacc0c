"""The summary of every effect a `list_effects` filter matches (not only of the page returned): counts by
status, and the cost and tokens the harness effects reported.

It is read from `effect_counts`, which triggers on `effects` keep per run, group and status (migration
`m260_issue26_scale`, which says which figures count), so its cost follows the number of runs and groups
the filter matches (for no run and no group: the totals, one row per status), not the history: a journal of
a million effects answers as one of a thousand."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from effectd.journal.store import Journal, filter_terms


def _where(run_id: str | None, group: str | None, statuses: Sequence[str] | None) -> tuple[str, list[Any]]:
    where, params = filter_terms(run_id, group, statuses, group_column="grp")
    if run_id is None and group is None:  # the totals over every effect (run and group '')
        where.insert(0, "run_id = '' AND grp = ''")
    return f"WHERE {' AND '.join(where)}", params


_SUMMARY = (
    "SELECT status, SUM(n) AS n, TOTAL(cost_usd) AS cost_usd, SUM(input_tokens) AS input_tokens, "
    "SUM(output_tokens) AS output_tokens FROM effect_counts {where} GROUP BY status HAVING SUM(n) > 0"
)


async def summarize_effects(
    journal: Journal, run_id: str | None, group: str | None, statuses: Sequence[str] | None
) -> dict[str, Any]:
    """`{"count", "by_status": {status: n}, "cost_usd", "tokens": {"input_tokens", "output_tokens"}}` over
    every effect matching the filter."""
    where, params = _where(run_id, group, statuses)
    rows = await journal.fetch(_SUMMARY.format(where=where), params)
    return {
        "count": sum(int(row["n"]) for row in rows),
        "by_status": {row["status"]: int(row["n"]) for row in rows},
        "cost_usd": round(max(0.0, sum(float(row["cost_usd"]) for row in rows)), 6),
        "tokens": {
            "input_tokens": sum(int(row["input_tokens"]) for row in rows),
            "output_tokens": sum(int(row["output_tokens"]) for row in rows),
        },
    }
