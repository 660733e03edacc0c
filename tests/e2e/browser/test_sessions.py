"""The dashboard of one server shows the whole project's work: another server's effects appear, change
live, and say which server (session) runs them. In a real headless browser, as test_dashboard.py."""

from __future__ import annotations

from pathlib import Path

from effectd.config.settings import Settings
from effectd.model.arguments import EffectRequest
from tests.helpers.browser import BROWSER, browser, wait_for_status
from tests.helpers.http import WAIT_FOR_FILE, http_client, serving
from tests.helpers.mcp import call, open_engine
from tests.helpers.processes import py

pytestmark = BROWSER


async def test_the_dashboard_shows_another_servers_effects_live_with_their_session(
    settings: Settings, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    async with open_engine(settings) as served, open_engine(settings) as other:
        async with serving(served) as url, http_client(url) as client, browser(tmp_path) as page:
            own = await call(client, "dispatch_effect", command=py("print('mine')"), label="served here")
            await page.goto(url)
            await wait_for_status(page, own["effect_id"], "succeeded")
            theirs = (
                await other.dispatch(EffectRequest(command=py(WAIT_FOR_FILE, str(gate)), label="over there"))
            ).record
            await wait_for_status(page, theirs.effect_id, "running")  # no reload: through the journal
            row = page.locator(f'#effects tr[data-effect-id="{theirs.effect_id}"]')
            session = (await row.locator("td.session").inner_text()).strip()
            assert session and session != "this" and session.endswith(theirs.owner[-6:])
            assert theirs.owner in (await row.locator("td.session").get_attribute("title") or "")
            mine = page.locator(f'#effects tr[data-effect-id="{own["effect_id"]}"] td.session')
            assert (await mine.inner_text()).strip() == "this"
            gate.touch()
            await wait_for_status(page, theirs.effect_id, "succeeded")
