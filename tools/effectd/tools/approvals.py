"""The approval tools (issue 25): list what sub-agents ask, and answer it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from mcp.types import ToolAnnotations
from pydantic import Field

from effectd.model.records import Approval, ApprovalList, Name
from effectd.tools._base import READS, engine_of, refusals, strict_tool


async def list_approvals(
    ctx: Context[Any, Any],
    run_id: Name | None = None,
    group: Name | None = None,
    effect_id: Name | None = None,
    status: Annotated[
        Literal["pending", "allowed", "denied", "timed_out"] | None, Field(description="only this status")
    ] = None,
) -> ApprovalList:
    """What sub-agents dispatched with `approvals: "ask"` asked to do, oldest first: the pending ones wait
    for answer_approval (their effect's record says `waiting_for: "approval"`)."""
    found = engine_of(ctx).approvals.list(run_id=run_id, group=group, effect_id=effect_id, status=status)
    return ApprovalList(approvals=[Approval.model_validate(approval) for approval in found])


async def answer_approval(
    ctx: Context[Any, Any],
    approval_id: Name,
    decision: Annotated[Literal["allow", "deny"], Field(description="allow the tool use, or deny it")],
    message: Annotated[
        str | None, Field(max_length=10_000, description="told to the sub-agent (a denial's why)")
    ] = None,
    updated_input: Annotated[
        dict[str, Any] | None, Field(description="allow: the tool input to use instead of the one asked")
    ] = None,
) -> Approval:
    """Answer a pending approval; the sub-agent has the answer at once. One already answered is an error."""
    with refusals():
        answered = await engine_of(ctx).approvals.answer(
            approval_id, decision, message=message, updated_input=updated_input, by="client"
        )
    return Approval.model_validate(answered)


def tools() -> list[Tool]:
    answers = ToolAnnotations(
        read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
    )
    return [
        strict_tool(list_approvals, title="List approvals", hints=READS),
        strict_tool(answer_approval, title="Answer an approval", hints=answers),
    ]
