"""Budgets in the journal: the BUDGET_SET and BUDGET_EXCEEDED events, their fold into the `budgets`
table, and the queries the budget keeper needs (the budgets, and the spending rows of a scope).

A budget's scope is a run (`kind` "run") or a group (`kind` "group"); a flow's steps form the group
named by its flow id. BUDGET_SET sets or replaces a budget (and clears an earlier "exceeded");
BUDGET_EXCEEDED records that its spending reached a limit, with what was spent then.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from effectd.journal.projection import Event

BUDGET_EVENTS = frozenset({"BUDGET_SET", "BUDGET_EXCEEDED"})
BUDGET_COLUMNS = (
    "kind", "name", "run_id", "max_cost_usd", "max_tokens", "set_at", "exceeded_at", "spent_cost_usd", "spent_tokens",
)  # fmt: skip
UPSERT_BUDGET = (
    f"INSERT OR REPLACE INTO budgets ({', '.join(BUDGET_COLUMNS)}) VALUES ({', '.join('?' * len(BUDGET_COLUMNS))})"
)


class Reads(Protocol):
    """What the budget queries need of the journal (the `Journal`, which folds these events): its reads."""

    async def fetch(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[dict[str, Any]]: ...


def budget_key(event: Event) -> tuple[str, str]:
    """The (kind, name) a budget event is about."""
    return event.data["kind"], event.data["name"]


def fold_budget(row: dict[str, Any] | None, event: Event) -> dict[str, Any] | None:
    """The budget's row after `event` (None: an EXCEEDED for a budget never set, which is ignored)."""
    data = event.data
    if event.type == "BUDGET_SET":
        return {
            "kind": data["kind"],
            "name": data["name"],
            "run_id": event.run_id,
            "max_cost_usd": data.get("max_cost_usd"),
            "max_tokens": data.get("max_tokens"),
            "set_at": data["set_at"],
            "exceeded_at": None,
            "spent_cost_usd": None,
            "spent_tokens": None,
        }
    if row is None or event.type != "BUDGET_EXCEEDED":
        return row
    return {
        **row,
        "exceeded_at": data["exceeded_at"],
        "spent_cost_usd": data.get("spent_cost_usd"),
        "spent_tokens": data.get("spent_tokens"),
    }


async def budget_rows(journal: Reads) -> list[dict[str, Any]]:
    """Every budget, as the `budgets` table holds it."""
    return await journal.fetch("SELECT * FROM budgets ORDER BY kind, name")


async def spending_rows(journal: Reads, kind: str, name: str) -> list[dict[str, Any]]:
    """What the harness effects of a run or group reported: id, status, result and progress."""
    column = "run_id" if kind == "run" else "group_name"
    return await journal.fetch(
        f"SELECT effect_id, kind, status, result, progress FROM effects WHERE {column} = ? AND kind = 'harness'",
        (name,),
    )
