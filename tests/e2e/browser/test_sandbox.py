"""The dashboard's detail panel shows the sandbox an effect ran in (a real headless browser)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from effectd.engine.core import Engine
from tests.helpers.browser import BROWSER, dashboard, wait_for_status
from tests.helpers.mcp import call
from tests.helpers.processes import py

pytestmark = [*BROWSER, pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap (bwrap)")]


async def test_the_detail_panel_shows_the_sandbox_of_an_effect(engine: Engine, tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    sandbox = {"network": {"allow": ["127.0.0.1:9"]}, "write": [str(tmp_path)], "hide": ["/srv"]}
    async with dashboard(engine, tmp_path) as (url, client, page):
        record = await call(
            client, "dispatch_effect", command=py("print(1)"), cwd=str(tmp_path / "work"), sandbox=sandbox, wait_s=30
        )
        assert record["status"] == "succeeded", record
        await page.goto(url)
        await wait_for_status(page, record["effect_id"], "succeeded")
        await page.locator(f'#effects tr[data-effect-id="{record["effect_id"]}"]').click()
        await page.wait_for_function("() => document.querySelector('#detail-fields').textContent.includes('Sandbox')")
        fields = await page.locator("#detail-fields").inner_text()
    assert f"network: only 127.0.0.1:9 · writes: {tmp_path} · hidden: /srv" in fields
