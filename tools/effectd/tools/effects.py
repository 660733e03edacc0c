"""The effect tools: dispatch, poll, list, cancel, and the harness listing."""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from pydantic import Field

from effectd.model.arguments import DispatchArguments
from effectd.model.records import CancelledGroup, EffectList, EffectRecord, Grace, HarnessList, Name
from effectd.tools._base import READS, STARTS, STOPS, engine_of, progress_of, refusals, strict_tool


async def dispatch_effect(ctx: Context[Any, Any], **arguments: Any) -> EffectRecord:
    """Run a command or a harness (sub-agent) as a supervised effect.

    Foreground (default): waits up to `wait_s` and returns the record, finished or not, sending the
    latest output line as progress. `background: true` returns at once; then use poll_effect,
    stream_effect, await_group or cancel_effect with the returned `effect_id`.
    `isolation: "worktree"` runs it in a git worktree of its own (branch `effectd/<effect_id>`); what it
    leaves uncommitted is committed there when it ends (see the record's `workspace`).
    """
    engine = engine_of(ctx)
    call = DispatchArguments.model_construct(**arguments)  # validated by the tool's argument model
    with refusals():
        dispatched = await engine.dispatch(call.request())
    if call.background:
        return dispatched.record
    return await engine.follow(
        dispatched.record.effect_id, call.wait_s, progress=progress_of(ctx), cancel_on_abandon=dispatched.new
    )


async def poll_effect(ctx: Context[Any, Any], effect_id: Name) -> EffectRecord:
    """The current record of an effect."""
    with refusals():
        return await engine_of(ctx).poll(effect_id)


async def list_effects(
    ctx: Context[Any, Any],
    run_id: Name | None = None,
    group: Name | None = None,
    status: Annotated[
        list[Annotated[str, Field(pattern="^(pending|queued|running|succeeded|failed|cancelled|skipped)$")]] | None,
        Field(description="only these statuses"),
    ] = None,
    limit: Annotated[int, Field(ge=1, le=1000)] = 100,
) -> EffectList:
    """Effects, newest first, filtered by run, group and status; with the run's cost summary."""
    return await engine_of(ctx).list_effects(run_id=run_id, group=group, statuses=status, limit=limit)


async def cancel_effect(
    ctx: Context[Any, Any],
    effect_id: Name,
    reason: Annotated[str | None, Field(max_length=2000, description="kept as cancel_message")] = None,
    grace_s: Annotated[Grace | None, Field(description="SIGTERM to SIGKILL for this cancel")] = None,
) -> EffectRecord:
    """Cancel an effect: pending/queued at once; running: SIGTERM to its process group, SIGKILL after grace.

    Returns once the process group is gone. An effect already finished is returned unchanged.
    """
    with refusals():
        return await engine_of(ctx).cancel(effect_id, message=reason, grace_s=grace_s)


async def cancel_group(
    ctx: Context[Any, Any],
    group: Name,
    reason: Annotated[str | None, Field(max_length=2000)] = None,
) -> CancelledGroup:
    """Cancel every effect of a group (or flow) that has not finished; returns them once they are."""
    with refusals():
        return await engine_of(ctx).cancel_group(group, message=reason)


async def list_harnesses(ctx: Context[Any, Any]) -> HarnessList:
    """The harness profiles this server can run, with their command line, parser and availability."""
    return HarnessList(harnesses=engine_of(ctx).harnesses())


def tools() -> list[Tool]:
    return [
        strict_tool(dispatch_effect, DispatchArguments, title="Dispatch an effect", hints=STARTS),
        strict_tool(poll_effect, title="Poll an effect", hints=READS),
        strict_tool(list_effects, title="List effects", hints=READS),
        strict_tool(cancel_effect, title="Cancel an effect", hints=STOPS),
        strict_tool(cancel_group, title="Cancel a run or group", hints=STOPS),
        strict_tool(list_harnesses, title="List harnesses", hints=READS),
    ]
