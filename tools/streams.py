"""Waiting on groups and reading output: await_group and stream_effect."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from effectd.errors import InvalidRequestError, UnknownEffectError
from effectd.models import EffectRecord, Name, Wait
from effectd.tools._base import engine_of, refusals, strict_tool
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from pydantic import BaseModel, Field


class AwaitResult(BaseModel):
    done: list[EffectRecord]
    pending: list[str]
    complete: bool
    cursor: int
    timed_out: bool


class StreamChunk(BaseModel):
    effect_id: str
    data: str
    cursor: int
    eof: bool
    status: str


async def await_group(
    ctx: Context[Any, Any],
    group: Name | None = None,
    effect_ids: Annotated[list[str] | None, Field(min_length=1, max_length=10_000)] = None,
    mode: Literal["all", "any"] = "all",
    timeout_s: Annotated[Wait, Field(description="wait at most this long (<= 55 s)")] = 25.0,
    cursor: Annotated[int, Field(ge=0, description="the cursor of the previous call; 0 at first")] = 0,
) -> AwaitResult:
    """Wait until every effect of a group (or list) is finished (`all`), or one more has finished (`any`).

    `done` holds the effects that finished after `cursor`, in the order they finished; pass the
    returned `cursor` back to take each completion exactly once.
    """
    engine = engine_of(ctx)
    with refusals():
        if (group is None) == (effect_ids is None):
            raise InvalidRequestError("give exactly one of `group` (a group or flow id) or `effect_ids` (a list)")
        if group is not None:
            ids = await engine.journal.group_ids(group)
            if not ids:
                raise UnknownEffectError(f"unknown group {group!r}: no effect was ever dispatched to it")
        else:
            ids = list(dict.fromkeys(effect_ids or []))
        effects = await engine.supervisor.get_many(ids)
    done, timed_out = await engine.supervisor.wait_completions(effects, mode, cursor, timeout_s)
    return AwaitResult(
        done=[e.record() for e in done],
        pending=[e.effect_id for e in effects if not e.terminal],
        complete=all(e.terminal for e in effects),
        cursor=max([cursor, *(e.terminal_seq or 0 for e in done)]),
        timed_out=timed_out,
    )


async def stream_effect(
    ctx: Context[Any, Any],
    effect_id: Name,
    cursor: Annotated[int, Field(ge=0, description="byte offset; the cursor of the previous call")] = 0,
    max_bytes: Annotated[int, Field(ge=1, le=1024 * 1024)] = 65536,
    wait_s: Annotated[Wait, Field(description="wait this long for new output (<= 55 s)")] = 0.0,
) -> StreamChunk:
    """Read an effect's combined stdout and stderr from byte `cursor`, waiting up to `wait_s` for more.

    `eof` is true once the effect is finished and everything was returned. Works while the effect
    runs, after it ended and after a server restart.
    """
    with refusals():
        effect = await engine_of(ctx).supervisor.get(effect_id)
    data, after, eof = await effect.read_output(cursor, max_bytes, wait_s)
    return StreamChunk(effect_id=effect.effect_id, data=data, cursor=after, eof=eof, status=effect.status)


def tools() -> list[Tool]:
    return [strict_tool(await_group), strict_tool(stream_effect)]
