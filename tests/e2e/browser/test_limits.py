"""The dashboard's detail panel shows an effect's limits and its peak memory (a real headless browser)."""

from __future__ import annotations

from pathlib import Path

import pytest

from effectd.engine.core import Engine
from effectd.runner.cgroups import Cgroups
from effectd.runner.controllers import Controllers
from tests.helpers.browser import BROWSER, dashboard, wait_for_status
from tests.helpers.mcp import call
from tests.helpers.processes import py

_v2 = Cgroups.find()
_missing = Controllers.find(_v2.root if _v2 is not None else None, prepare=False).refusal(["memory_mb", "pids"])
pytestmark = [*BROWSER, pytest.mark.skipif(_missing is not None, reason=f"needs memory and pids limits: {_missing}")]


async def test_the_detail_panel_shows_the_limits_and_the_peak_memory(engine: Engine, tmp_path: Path) -> None:
    hog = "chunks = []\nfor _ in range(200):\n    chunks.append(bytearray(1024 * 1024))"
    async with dashboard(engine, tmp_path) as (url, client, page):
        record = await call(client, "dispatch_effect", command=py(hog), limits={"memory_mb": 32, "pids": 8}, wait_s=30)
        assert record["status"] == "failed" and record["peak_memory_mb"] is not None
        await page.goto(url)
        await wait_for_status(page, record["effect_id"], "failed")
        await page.locator(f'#effects tr[data-effect-id="{record["effect_id"]}"]').click()
        await page.wait_for_function("() => document.querySelector('#detail-fields').textContent.includes('MiB')")
        fields = await page.locator("#detail-fields").inner_text()
    assert "memory 32 MiB · pids 8" in fields
    assert f"Peak memory\n{record['peak_memory_mb']:g} MiB" in fields
    assert "memory limit (32 MiB) exceeded" in fields
