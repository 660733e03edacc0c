"""Calling effectd's tools through an MCP client, and waiting on what they report (always with a bound)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import anyio
from mcp import Client

from effectd.app import build_server
from effectd.config.settings import Settings
from effectd.engine.core import Engine


def structured(result: Any) -> Any:
    data = result.structured_content
    if data is None:
        data = json.loads(result.content[0].text)
    return data


def text_of(result: Any) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content or [])


async def call(client: Client, tool: str, **arguments: Any) -> Any:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, f"{tool}({arguments}) failed: {text_of(result)}"
    return structured(result)


async def call_error(client: Client, tool: str, **arguments: Any) -> str:
    result = await client.call_tool(tool, arguments)
    assert result.is_error, f"{tool}({arguments}) was accepted: {structured(result)}"
    return text_of(result)


@asynccontextmanager
async def open_engine(settings: Settings) -> AsyncIterator[Engine]:
    async with Engine.open(settings) as engine:
        yield engine


@asynccontextmanager
async def connected(settings: Settings, **overrides: Any) -> AsyncIterator[tuple[Engine, Client]]:
    """An engine with `overrides` on the settings and an in-memory client on it."""
    async with Engine.open(replace(settings, **overrides)) as engine:
        async with Client(build_server(engine), read_timeout_seconds=70) as client:
            yield engine, client


async def read_until(client: Client, effect_id: str, needle: str, within_s: float = 20) -> str:
    """Streams the effect's output until `needle` appears; returns all of it so far."""
    text, cursor = "", 0
    with anyio.fail_after(within_s):
        while needle not in text:
            chunk = await call(client, "stream_effect", effect_id=effect_id, cursor=cursor, wait_s=5)
            text += chunk["data"]
            cursor = chunk["cursor"]
            if chunk["eof"] and needle not in text:
                raise AssertionError(f"{needle!r} never appeared; output was {text!r}")
    return text


async def wait_until(condition: Callable[[], object], within_s: float = 10) -> None:
    """Polls `condition()` until it holds, failing after `within_s`."""
    with anyio.fail_after(within_s):
        while not condition():  # noqa: ASYNC110 - a plain condition, polled with a bound
            await anyio.sleep(0.01)
