"""Waiting on groups and reading output: await_group and stream_effect."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.tools import Tool
from pydantic import Field

from effectd.model.records import GroupWait, Name, OutputChunk, Wait
from effectd.tools._base import READS, engine_of, refusals, strict_tool


async def await_group(
    ctx: Context[Any, Any],
    group: Name | None = None,
    effect_ids: Annotated[list[str] | None, Field(min_length=1, max_length=10_000)] = None,
    mode: Annotated[
        Literal["all", "any", "first_success", "quorum"],
        Field(description="all | any | first_success (a race) | quorum (with k)"),
    ] = "all",
    timeout_s: Annotated[Wait, Field(description="wait at most this long (<= 55 s)")] = 25.0,
    cursor: Annotated[int, Field(ge=0, description="the cursor of the previous call; 0 at first")] = 0,
    k: Annotated[
        int | None, Field(description="quorum only: how many must succeed, 1 to the number of effects")
    ] = None,
    cancel_rest: Annotated[
        bool | None,
        Field(description="race modes: once decided, cancel the others (reason superseded); default true"),
    ] = None,
) -> GroupWait:
    """Wait until every effect of a group (or list) is finished (`all`), or one more has finished (`any`),
    or one has succeeded (`first_success`), or `k` have (`quorum`).

    `done` holds the effects that finished after `cursor`, in the order they finished; pass the
    returned `cursor` back to take each completion exactly once. The race modes also return
    `satisfied` and `winners`; once satisfied, the others are cancelled with reason `superseded`
    (unless `cancel_rest: false`) and the call returns after their processes are gone. A quorum that
    can no longer be reached, or a timeout, cancels nothing.
    """
    with refusals():
        return await engine_of(ctx).await_group(
            group=group,
            effect_ids=effect_ids,
            mode=mode,
            timeout_s=timeout_s,
            cursor=cursor,
            k=k,
            cancel_rest=cancel_rest,
        )


async def stream_effect(
    ctx: Context[Any, Any],
    effect_id: Name,
    cursor: Annotated[int, Field(ge=0, description="byte offset; the cursor of the previous call")] = 0,
    max_bytes: Annotated[int, Field(ge=1, le=1024 * 1024)] = 65536,
    wait_s: Annotated[Wait, Field(description="wait this long for new output (<= 55 s)")] = 0.0,
) -> OutputChunk:
    """Read an effect's combined stdout and stderr from byte `cursor`, waiting up to `wait_s` for more.

    `eof` is true once the effect is finished and everything was returned. Works while the effect
    runs, after it ended and after a server restart.
    """
    with refusals():
        return await engine_of(ctx).read_output(effect_id, cursor, max_bytes, wait_s)


def tools() -> list[Tool]:
    return [
        strict_tool(await_group, title="Await effects", hints=READS),
        strict_tool(stream_effect, title="Read an effect's output", hints=READS),
    ]
