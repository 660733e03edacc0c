"""A harness that asks before it writes (`effectd.demo.asker` behind a profile with `approvals = "claude"`,
as tests/e2e/test_approvals.py configures over stdio), for in-process engines."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio

import effectd.demo.asker as asker_module
from effectd.config.settings import Settings
from effectd.engine.core import Engine
from effectd.harness.profiles import profile_from_config

ASKER = Path(asker_module.__file__)  # run by path, as a profile's command names a program


def with_asker(settings: Settings) -> Settings:
    """The settings with the harness `asker`: its prompt `write PATH TEXT` asks to Write TEXT to PATH."""
    asker = profile_from_config(
        "asker", {"command": [sys.executable, str(ASKER), "-p", "{prompt}"], "approvals": "claude"}
    )
    return replace(settings, harnesses={**settings.harnesses, "asker": asker})


async def pending_of(engine: Engine, effect_id: str, within_s: float = 30) -> dict[str, Any]:
    """The effect's first pending approval, once its sub-agent has asked (bounded)."""
    with anyio.fail_after(within_s):
        while not (found := engine.approvals.list(effect_id=effect_id, status="pending")):  # noqa: ASYNC110
            await anyio.sleep(0.02)  # the sub-agent's request, polled with a bound
    return found[0]
