"""The flow tools: dispatch_flow and poll_flow."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from effectd.flows import MAX_STEPS, Flow, FlowManager, FlowRecord, Policy, Step
from effectd.models import Name, Wait
from effectd.tools._base import engine_of, refusals, strict_tool
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from pydantic import Field


async def follow_flow(ctx: Context[Any, Any], flows: FlowManager, flow: Flow, wait_s: float, *, owned: bool) -> None:
    """Waits up to `wait_s` for the flow to end, reporting each step's end as MCP progress.

    A client that abandons the call cancels the flow it started (reason `client_cancelled`).
    """
    try:
        with anyio.move_on_after(wait_s):
            reported = -1
            while not flow.done.is_set():
                changed = flow.changed
                finished = flow.finished_steps()
                if finished != reported:
                    reported = finished
                    await ctx.report_progress(finished, len(flow.steps), f"{finished}/{len(flow.steps)} steps ended")
                    continue
                await changed.wait()
    except anyio.get_cancelled_exc_class():
        if owned:
            flows.cancel(flow, "client_cancelled", "the client abandoned the call")
        raise


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
) -> FlowRecord:
    """Run a DAG of effects: each step starts as soon as every step it `needs` has succeeded (no level barriers).

    Steps form the group named by the flow id, so await_group, stream_effect, cancel_effect and
    cancel_group work on them. Foreground (default) waits up to `wait_s` for the flow to end;
    `background: true` returns at once; then poll_flow(flow_id, wait_s=...) for the record.
    """
    engine = engine_of(ctx)
    with refusals():
        flow, new = await engine.flows.submit(
            steps, policy=policy, max_concurrency=max_concurrency, flow_id=flow_id, run_id=run_id
        )
    if not background:
        await follow_flow(ctx, engine.flows, flow, wait_s, owned=new)
    return await engine.flows.record(flow)


async def poll_flow(
    ctx: Context[Any, Any],
    flow_id: Name,
    wait_s: Annotated[Wait, Field(description="wait up to this long for the flow to end (<= 55 s)")] = 0.0,
) -> FlowRecord:
    """The current record of a flow: its status, its steps' statuses and times, wall time and speedup."""
    flows = engine_of(ctx).flows
    with refusals():
        flow = await flows.get(flow_id)
    if wait_s > 0:
        await flows.wait(flow, wait_s)
    return await flows.record(flow)


def tools() -> list[Tool]:
    return [strict_tool(dispatch_flow), strict_tool(poll_flow)]
