"""The effect tools: dispatch, poll, list, cancel, and the harness listing."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from effectd.models import CANCEL_WAIT_S, Duration, EffectRecord, Grace, Name, Wait
from effectd.specs import build_spec
from effectd.supervisor import Effect
from effectd.tools._base import engine_of, refusals, strict_tool
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from pydantic import BaseModel, Field

_PROGRESS_EVERY_S = 0.1


class EffectList(BaseModel):
    effects: list[EffectRecord]
    summary: dict[str, Any] | None = None


class CancelledGroup(BaseModel):
    cancelled: list[str]
    effects: list[EffectRecord]


class HarnessList(BaseModel):
    harnesses: list[dict[str, Any]]


async def follow_in_foreground(ctx: Context[Any, Any], effect: Effect, wait_s: float, *, owned: bool) -> None:
    """Waits up to `wait_s` for the effect to end, reporting its latest output line as MCP progress.

    A client that abandons the call cancels the effect it started (reason `client_cancelled`).
    """
    try:
        with anyio.move_on_after(wait_s):
            sent: tuple[int, str] | None = None
            while not effect.terminal:
                changed = effect.changed
                line = (effect.progress or {}).get("last_text") or effect.output.last_line
                if line is not None and (effect.output.lines_seen, line) != sent:
                    sent = (effect.output.lines_seen, line)
                    await ctx.report_progress(effect.output.size, None, line)
                    with anyio.move_on_after(_PROGRESS_EVERY_S):  # at most ten notices a second
                        await effect.done.wait()
                    continue
                await changed.wait()
    except anyio.get_cancelled_exc_class():
        if owned:
            engine_of(ctx).supervisor.request_cancel(effect, "client_cancelled", "the client abandoned the call")
        raise


async def dispatch_effect(
    ctx: Context[Any, Any],
    command: Annotated[list[str] | None, Field(description="argv list, never a shell string")] = None,
    harness: Annotated[Name | None, Field(description="harness profile name (see list_harnesses)")] = None,
    prompt: Annotated[str | None, Field(description="the prompt for the harness")] = None,
    args: Annotated[list[str] | None, Field(description="extra arguments for the harness CLI")] = None,
    background: Annotated[bool, Field(description="return at once instead of waiting")] = False,
    wait_s: Annotated[Wait, Field(description="foreground: wait at most this long (<= 55 s)")] = 25.0,
    group: Name | None = None,
    run_id: Name | None = None,
    label: Annotated[str | None, Field(max_length=1000)] = None,
    key: Annotated[Name | None, Field(description="idempotency key within the run")] = None,
    depends_on: Annotated[list[str] | None, Field(description="effect ids that must succeed first")] = None,
    timeout_s: Annotated[Duration | None, Field(description="cancel after this long running")] = None,
    idle_timeout_s: Annotated[Duration | None, Field(description="cancel after this long with no output")] = None,
    grace_s: Annotated[Grace | None, Field(description="SIGTERM to SIGKILL, default 5")] = None,
    cwd: str | None = None,
    env: Annotated[dict[str, str] | None, Field(description="merged over the server's environment")] = None,
    stdin: str | None = None,
    max_attempts: Annotated[int, Field(ge=1, le=100, description="attempts for a failing effect")] = 1,
    retry_backoff_s: Annotated[float, Field(ge=0, le=3600, description="wait before retry n: this * 2^(n-1)")] = 0,
    group_max_concurrency: Annotated[
        int | None, Field(ge=1, le=10_000, description="cap on running effects of `group` (first dispatch sets it)")
    ] = None,
) -> EffectRecord:
    """Run a command or a harness (sub-agent) as a supervised effect.

    Foreground (default): waits up to `wait_s` and returns the record, finished or not, sending the
    latest output line as progress. `background: true` returns at once; then use poll_effect,
    stream_effect, await_group or cancel_effect with the returned `effect_id`.
    """
    engine = engine_of(ctx)
    with refusals():
        request = {
            "command": command,
            "harness": harness,
            "prompt": prompt,
            "args": args,
            "group": group,
            "label": label,
            "key": key,
            "depends_on": depends_on,
            "timeout_s": timeout_s,
            "idle_timeout_s": idle_timeout_s,
            "grace_s": grace_s,
            "cwd": cwd,
            "env": env,
            "stdin": stdin,
            "max_attempts": max_attempts,
            "retry_backoff_s": retry_backoff_s,
            "group_max_concurrency": group_max_concurrency,
        }
        spec = build_spec(engine.settings, request)
        effect, new = await engine.supervisor.dispatch(spec, run_id)
    if not background:
        await follow_in_foreground(ctx, effect, wait_s, owned=new)
    return effect.record()


async def poll_effect(ctx: Context[Any, Any], effect_id: Name) -> EffectRecord:
    """The current record of an effect."""
    with refusals():
        return (await engine_of(ctx).supervisor.get(effect_id)).record()


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
    engine = engine_of(ctx)
    rows = await engine.journal.list_effects(run_id, group, status, limit)
    records = await engine.supervisor.records(rows)
    return EffectList(effects=records, summary=summarize(records) if records else None)


def summarize(records: list[EffectRecord]) -> dict[str, Any]:
    """Counts by status, and the cost and tokens over the harness effects among `records`."""
    counts: dict[str, int] = {}
    cost = 0.0
    tokens = {"input_tokens": 0, "output_tokens": 0}
    for record in records:
        counts[record.status] = counts.get(record.status, 0) + 1
        result = record.result if isinstance(record.result, dict) else {}
        if record.kind == "harness":
            cost += float(result.get("cost_usd") or 0)
            usage = result.get("usage") or {}
            for name in tokens:
                value = usage.get(name)
                tokens[name] += int(value) if isinstance(value, int | float) else 0
    return {"count": len(records), "by_status": counts, "cost_usd": round(cost, 6), "tokens": tokens}


async def cancel_effect(
    ctx: Context[Any, Any],
    effect_id: Name,
    reason: Annotated[str | None, Field(max_length=2000, description="kept as cancel_message")] = None,
    grace_s: Annotated[Grace | None, Field(description="SIGTERM to SIGKILL for this cancel")] = None,
) -> EffectRecord:
    """Cancel an effect: pending/queued at once; running: SIGTERM to its process group, SIGKILL after grace.

    Returns once the process group is gone. An effect already finished is returned unchanged.
    """
    supervisor = engine_of(ctx).supervisor
    with refusals():
        effect = await supervisor.get(effect_id)
    with anyio.CancelScope(shield=True):  # a cancel, once asked, is seen through
        await supervisor.cancel(effect, "user", reason, grace_s, within_s=CANCEL_WAIT_S)
    return effect.record()


async def cancel_group(
    ctx: Context[Any, Any],
    group: Name,
    reason: Annotated[str | None, Field(max_length=2000)] = None,
) -> CancelledGroup:
    """Cancel every effect of a group (or flow) that has not finished; returns them once they are."""
    engine = engine_of(ctx)
    with refusals():
        ids = await engine.journal.group_ids(group)
        if not ids:
            from effectd.errors import UnknownEffectError

            raise UnknownEffectError(f"unknown group {group!r}: no effect was ever dispatched to it")
        effects = await engine.supervisor.get_many(ids)
    with anyio.CancelScope(shield=True):  # a cancel, once asked, is seen through
        targets = await engine.supervisor.cancel_many(effects, "user", reason, within_s=CANCEL_WAIT_S)
    return CancelledGroup(cancelled=[e.effect_id for e in targets], effects=[e.record() for e in effects])


async def list_harnesses(ctx: Context[Any, Any]) -> HarnessList:
    """The harness profiles this server can run, with their command line, parser and availability."""
    profiles = engine_of(ctx).settings.harnesses
    return HarnessList(harnesses=[profiles[name].to_json() for name in sorted(profiles)])


def tools() -> list[Tool]:
    return [
        strict_tool(fn)
        for fn in (dispatch_effect, poll_effect, list_effects, cancel_effect, cancel_group, list_harnesses)
    ]
