"""The approvals gate's Unix socket (engine/approvals.py) lives exactly as long as the engine."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from effectd.config.settings import Settings
from effectd.engine.core import Engine
from effectd.model.arguments import EffectRequest
from tests.helpers.approvals import pending_of, with_asker

pytestmark = pytest.mark.anyio


async def test_the_gate_socket_is_closed_when_the_engine_closes(settings: Settings, tmp_path: Path) -> None:
    """Closed by the engine, not left to the garbage collector (whose ResourceWarning came at random)."""
    async with Engine.open(with_asker(settings)) as engine:
        request = EffectRequest(harness="asker", prompt=f"write {tmp_path / 'out.txt'} x", approvals="ask")
        record = (await engine.dispatch(request)).record
        await pending_of(engine, record.effect_id)
        gate = json.loads((settings.output_dir / f"{record.effect_id}.gate.json").read_text())
        socket_path = gate["mcpServers"]["effectd"]["env"]["EFFECTD_GATE_SOCKET"]
        assert socket_path in await anyio.Path("/proc/net/unix").read_text()
    assert socket_path not in await anyio.Path("/proc/net/unix").read_text(), "the gate's socket is still open"
    assert not Path(socket_path).parent.exists()
