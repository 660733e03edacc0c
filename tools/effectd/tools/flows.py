"""The flow tools: dispatch_flow and poll_flow."""

from __future__ import annotations

from typing import Annotated, Any

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from pydantic import Field

from effectd.flows.models import MAX_STEPS, FlowRecord, FlowRequest, Policy, Step
from effectd.model.arguments import Limits
from effectd.model.records import Name, Wait
from effectd.tools._base import READS, STARTS, engine_of, progress_of, refusals, strict_tool


async def dispatch_flow(
    ctx: Context[Any, Any],
    steps: Annotated[
        list[Step],
        Field(
            max_length=MAX_STEPS,
            description="the steps: dispatch_effect's effect arguments plus `id` and `needs` (step ids); "
            "`prompt`, `command`, `args` and `stdin` may use {{steps.ID.output}}, {{steps.ID.result}}, "
            "{{steps.ID.result.FIELD}} for a step this one needs",
        ),
    ],
    policy: Annotated[
        Policy, Field(description="fail_fast: the first failure stops the flow; continue: other branches run on")
    ] = "fail_fast",
    max_concurrency: Annotated[int | None, Field(ge=1, le=10_000, description="cap on running steps")] = None,
    background: Annotated[bool, Field(description="return at once instead of waiting")] = False,
    wait_s: Annotated[Wait, Field(description="foreground: wait at most this long (<= 55 s)")] = 25.0,
    flow_id: Annotated[Name | None, Field(description="default: a new id prefixed flw_")] = None,
    run_id: Name | None = None,
    budget: Annotated[
        Limits | None,
        Field(description="{max_cost_usd?, max_tokens?}: the budget of the flow's group, as set_budget sets one"),
    ] = None,
    resume: Annotated[
        Name | None,
        Field(
            description="the id of an earlier flow: each step that succeeded there, with the same arguments after "
            "templating and every step it needs taken too, is taken from it (cached) instead of run again"
        ),
    ] = None,
) -> FlowRecord:
    """Run a DAG of effects: each step starts as soon as every step it `needs` has succeeded (no level barriers).

    Steps form the group named by the flow id, so await_group, stream_effect, cancel_effect and
    cancel_group work on them. Foreground (default) waits up to `wait_s` for the flow to end;
    `background: true` returns at once; then poll_flow(flow_id, wait_s=...) for the record.
    After a failure, fix the cause and dispatch the same steps with `resume: OLD_FLOW_ID`: only the
    steps that failed, did not run, or whose inputs changed run again.
    """
    engine = engine_of(ctx)
    with refusals():
        request = FlowRequest(
            steps=steps,
            policy=policy,
            max_concurrency=max_concurrency,
            flow_id=flow_id,
            run_id=run_id,
            budget=budget,
            resume=resume,
        )
        dispatched = await engine.dispatch_flow(request)
    if background:
        return dispatched.record
    return await engine.follow_flow(
        dispatched.record.flow_id, wait_s, progress=progress_of(ctx), cancel_on_abandon=dispatched.new
    )


async def poll_flow(
    ctx: Context[Any, Any],
    flow_id: Name,
    wait_s: Annotated[Wait, Field(description="wait up to this long for the flow to end (<= 55 s)")] = 0.0,
) -> FlowRecord:
    """The current record of a flow: its status, its steps' statuses and times, wall time and speedup."""
    with refusals():
        return await engine_of(ctx).poll_flow(flow_id, wait_s)


def tools() -> list[Tool]:
    return [
        strict_tool(dispatch_flow, title="Dispatch a flow", hints=STARTS),
        strict_tool(poll_flow, title="Poll a flow", hints=READS),
    ]
