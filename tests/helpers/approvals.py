"""A harness that asks before it writes (`effectd.demo.asker` behind a profile with `approvals = "claude"`),
for in-process engines (`with_asker`) and for `effectd serve` over stdio (`asker_params`), and the waits
for its request (`pending_of` in process, `pending_approval` through an MCP client)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

import effectd.demo.asker as asker_module
from effectd.config.settings import Settings
from effectd.engine.core import Engine
from effectd.harness.profiles import profile_from_config
from tests.helpers.mcp import call
from tests.helpers.processes import stdio_params

ASKER = Path(asker_module.__file__)  # run by path, as a profile's command names a program


def with_asker(settings: Settings) -> Settings:
    """The settings with the harness `asker`: its prompt `write PATH TEXT` asks to Write TEXT to PATH."""
    asker = profile_from_config(
        "asker", {"command": [sys.executable, str(ASKER), "-p", "{prompt}"], "approvals": "claude"}
    )
    return replace(settings, harnesses={**settings.harnesses, "asker": asker})


def asker_params(tmp_path: Path) -> StdioServerParameters:
    """`effectd serve` on a fresh journal with the harness `asker`, and `plain`: the same CLI, its hook
    not declared (so `approvals: "ask"` is refused there)."""
    config = tmp_path / "effectd.toml"
    command = json.dumps([sys.executable, str(ASKER), "-p", "{prompt}"])
    config.write_text(
        f'[harness.asker]\ncommand = {command}\nparser = "lines"\napprovals = "claude"\n'
        f"[harness.plain]\ncommand = {command}\n"
    )
    return stdio_params(tmp_path / "journal.db", "--config", str(config), "--allow-any-command")


async def pending_approval(client: Client, effect_id: str, within_s: float = 30) -> dict[str, Any]:
    """The effect's first pending approval, through `list_approvals`, once its sub-agent asked (bounded)."""
    with anyio.fail_after(within_s):
        while True:
            found = (await call(client, "list_approvals", effect_id=effect_id, status="pending"))["approvals"]
            if found:
                return found[0]  # type: ignore[no-any-return]
            await anyio.sleep(0.05)


async def pending_of(engine: Engine, effect_id: str, within_s: float = 30) -> dict[str, Any]:
    """The effect's first pending approval, once its sub-agent has asked (bounded)."""
    with anyio.fail_after(within_s):
        while not (found := engine.approvals.list(effect_id=effect_id, status="pending")):  # noqa: ASYNC110
            await anyio.sleep(0.02)  # the sub-agent's request, polled with a bound
    return found[0]
