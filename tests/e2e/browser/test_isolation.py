"""The dashboard shows an isolated effect's branch and the files it changed (a real headless browser)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from effectd.engine.core import Engine
from tests.helpers.browser import BROWSER, dashboard, wait_for_status
from tests.helpers.git import WRITE, make_repo
from tests.helpers.mcp import call
from tests.helpers.processes import py

# anyio, slow, skipped without a browser (as every dashboard test), and without git.
pytestmark = [*BROWSER, pytest.mark.skipif(shutil.which("git") is None, reason="needs git on PATH")]


async def test_the_detail_panel_shows_the_branch_and_the_changed_files(engine: Engine, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    async with dashboard(engine, tmp_path) as (url, client, page):
        record = await call(
            client,
            "dispatch_effect",
            command=py(WRITE, "docs/guide.md", "a guide\nin two lines\n"),
            cwd=str(repo),
            isolation="worktree",
            wait_s=30,
        )
        assert record["status"] == "succeeded"
        await page.goto(url)
        row = page.locator(f'#effects tr[data-effect-id="{record["effect_id"]}"]')
        await wait_for_status(page, record["effect_id"], "succeeded")
        await row.click()
        await page.wait_for_function(
            "() => document.querySelector('#detail-fields').textContent.includes('docs/guide.md')"
        )
        fields = await page.locator("#detail-fields").inner_text()
    assert f"effectd/{record['effect_id']}" in fields
    assert "1 file, +2 −0" in fields and "docs/guide.md" in fields and "(removed)" in fields
