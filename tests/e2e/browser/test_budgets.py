"""The dashboard shows a scope's spending against its budget (`/api/budgets`, and the scope panel)."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from effectd.engine.core import Engine
from tests.helpers.browser import BROWSER, dashboard, with_fake_harness
from tests.helpers.mcp import call
from tests.helpers.programs import QUICK

pytestmark = BROWSER


@pytest.fixture
async def engine(settings):  # type: ignore[no-untyped-def]
    async with Engine.open(with_fake_harness(settings)) as engine:
        yield engine


async def test_the_scope_panel_shows_spending_against_the_budget(engine: Engine, tmp_path: Path) -> None:
    async with dashboard(engine, tmp_path) as (url, client, page):
        await call(client, "set_budget", group="paid", max_cost_usd=0.03, max_tokens=100_000)
        for prompt in ("a", "b"):
            args = [*QUICK, "--cost", "0.02"]
            await call(client, "dispatch_effect", harness="fake", prompt=prompt, args=args, group="paid")
        async with httpx2.AsyncClient(timeout=10) as http:
            (budget,) = (await http.get(f"{url}/api/budgets")).json()["budgets"]
        assert budget["scope"] == {"group": "paid"} and budget["exceeded"] is True
        assert budget["spent_cost_usd"] == pytest.approx(0.04) and 0 < budget["spent_tokens"] < 100_000

        await page.goto(f"{url}/#group=paid")
        shown = page.locator("#scope-budget")
        await shown.wait_for()
        text = await shown.inner_text()
        assert text.startswith("budget $0.04 of $0.03") and f"{budget['spent_tokens']} of 100000 tokens" in text
        assert text.endswith("spent") and "exceeded" in (await shown.get_attribute("class") or "")
