"""The budget tool: set_budget (a flow's budget is `dispatch_flow`'s `budget` argument)."""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from mcp.types import ToolAnnotations
from pydantic import Field

from effectd.engine.budgets import BudgetRecord
from effectd.model.arguments import Limits
from effectd.model.records import Name
from effectd.tools._base import engine_of, refusals, strict_tool


async def set_budget(
    ctx: Context[Any, Any],
    run_id: Annotated[Name | None, Field(description="the run whose budget this is (or give `group`)")] = None,
    group: Annotated[Name | None, Field(description="the group (or flow id) whose budget this is")] = None,
    max_cost_usd: Annotated[float | None, Field(ge=0, le=1e9, description="US dollars; null: no cost limit")] = None,
    max_tokens: Annotated[
        int | None, Field(ge=0, le=10**15, description="input plus output tokens; null: no token limit")
    ] = None,
) -> BudgetRecord:
    """Set or replace the spending budget of a run or a group of harness effects (sub-agents).

    Spending counts the cost and tokens the harness effects of the scope report: their final results,
    plus their live usage while they run. Once it reaches a limit, the scope's running harness effects
    and its pending and queued effects are cancelled (reason `budget`), and any later dispatch into it
    is refused, until the limit is raised here. Returns what was spent against the limits.
    """
    with refusals():
        limits = Limits(max_cost_usd=max_cost_usd, max_tokens=max_tokens)
        return await engine_of(ctx).set_budget(limits, run_id=run_id, group=group)


def tools() -> list[Tool]:
    # Setting the same budget again changes nothing more; one at or below what was spent stops the scope's effects.
    hints = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False)
    return [strict_tool(set_budget, title="Set a budget", hints=hints)]
