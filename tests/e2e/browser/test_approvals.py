"""Approvals on the dashboard (issue 25), in a real headless browser: a sub-agent's request appears live with
Allow and Deny, the answer reaches the sub-agent, and one answered elsewhere leaves the page. The sub-agent is
`effectd.demo.asker` behind a profile with `approvals = "claude"` (`with_asker`), which writes its
file only when allowed. `EFFECTD_APPROVALS_SCREENSHOT=PATH` makes the first test also write its picture to PATH
(docs/approvals.png was made that way)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import anyio

from effectd.config.settings import Settings
from effectd.engine.core import Engine
from tests.helpers.approvals import pending_of, with_asker
from tests.helpers.browser import BROWSER, dashboard
from tests.helpers.mcp import call

pytestmark = BROWSER

CARD = '#approvals article[data-effect-id="{}"]'
NOTES = "## 1.4.0\n\n- Approvals: a sub-agent asks before it acts\n- The dashboard shows them, with Allow and Deny\n"


async def ask(client: Any, target: Path, text: str, label: str) -> str:
    prompt = f"write {target} {text}"
    started = await call(
        client, "dispatch_effect", harness="asker", prompt=prompt, approvals="ask", label=label, group="agents",
        background=True,
    )  # fmt: skip
    return str(started["effect_id"])


async def row_says(page: Any, effect_id: str, text: str) -> None:
    await page.wait_for_function(
        "([id, text]) => { const td = document.querySelector(`#effects tr[data-effect-id='${id}'] td.status`);"
        " return td !== null && td.textContent.includes(text); }",
        arg=[effect_id, text],
    )


async def ended(engine: Engine, effect_id: str) -> dict[str, Any]:
    with anyio.fail_after(30):
        while (record := await engine.poll(effect_id)).status == "running":  # noqa: ASYNC110
            await anyio.sleep(0.05)  # the sub-agent's end, polled with a bound
    return record.model_dump(mode="json")


async def test_a_pending_approval_is_allowed_or_denied_from_the_page(settings: Settings, tmp_path: Path) -> None:
    notes, config = tmp_path / "CHANGELOG.md", tmp_path / "deploy.toml"
    async with Engine.open(with_asker(settings)) as engine, dashboard(engine, tmp_path) as (url, client, page):
        await page.set_viewport_size({"width": 1400, "height": 760})
        await page.goto(url)
        await page.evaluate("window.__same_page = true")
        writer = await ask(client, notes, NOTES, "release notes")
        deployer = await ask(client, config, '[prod]\nhost = "db-1.internal"\nreplicas = 3\n', "deploy config")
        for effect_id in (writer, deployer):  # live: the page was open before they asked
            await page.locator(CARD.format(effect_id)).wait_for()
            await row_says(page, effect_id, "running · waiting for approval")
        card = page.locator(CARD.format(writer))
        assert (await card.locator(".tool").inner_text()) == "Write"
        assert (await card.locator(".approval-effect").inner_text()) == "release notes"
        assert (await card.locator(".approval-input").inner_text()).startswith(f"file_path\n{notes}\ncontent\n## 1.4.0")
        assert await card.get_by_role("button", name="Allow").is_visible()
        assert await card.get_by_role("button", name="Deny").is_visible()
        assert "2 waiting for approval" in await page.locator("#counts").inner_text()
        shot = tmp_path / "approvals.png"
        await page.screenshot(path=str(shot))
        if os.environ.get("EFFECTD_APPROVALS_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["EFFECTD_APPROVALS_SCREENSHOT"])

        await card.get_by_role("button", name="Allow").click()
        with anyio.fail_after(30):
            while not notes.exists():  # noqa: ASYNC110 - the sub-agent's write, polled with a bound
                await anyio.sleep(0.02)
        await card.wait_for(state="detached")
        await row_says(page, writer, "succeeded")

        other = page.locator(CARD.format(deployer))
        await other.locator(".approval-message").fill("not on prod: staging first")
        await other.get_by_role("button", name="Deny").click()
        await other.wait_for(state="detached")
        await row_says(page, deployer, "succeeded")
        assert await page.locator("#approvals").is_hidden(), "no approval is pending"
        assert await page.evaluate("window.__same_page === true"), "the page was reloaded"
        denied = await ended(engine, deployer)
        answers = {a["effect_id"]: a for a in engine.approvals.list()}
    assert notes.read_text() == NOTES and not config.exists()
    assert (answers[writer]["status"], answers[writer]["decided_by"]) == ("allowed", "dashboard")
    assert (answers[deployer]["status"], answers[deployer]["decided_by"]) == ("denied", "dashboard")
    assert answers[deployer]["message"] == "not on prod: staging first"
    assert "denied: not on prod: staging first" in denied["output_tail"]
    assert shot.stat().st_size > 20_000, "the screenshot is of a page"


async def test_an_approval_answered_elsewhere_leaves_the_page_and_answering_it_there_says_so(
    settings: Settings, tmp_path: Path
) -> None:
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    hostile = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>' + "y" * 3000
    async with Engine.open(with_asker(settings)) as engine, dashboard(engine, tmp_path) as (url, client, page):
        await page.goto(url)
        one = await ask(client, first, "one", "first")
        two = await ask(client, second, hostile, "<b>second</b>")
        for effect_id in (one, two):
            await page.locator(CARD.format(effect_id)).wait_for()
        card = page.locator(CARD.format(two))
        # The untrusted input and label are text: no element of theirs, the long content cut with its length.
        assert await card.locator("img, script, b").count() == 0
        assert (await card.locator(".approval-effect").inner_text()) == "<b>second</b>"
        shown = await card.locator(".approval-input dd").nth(1).inner_text()
        assert shown.startswith(hostile[:100]) and f"… {len(hostile) - 600:,} more characters" in shown
        assert await page.evaluate("window.__pwned === undefined")

        answered = (await pending_of(engine, one))["approval_id"]
        await call(client, "answer_approval", approval_id=answered, decision="deny", message="by the orchestrator")
        await page.locator(CARD.format(one)).wait_for(state="detached")  # live, without a reload
        await row_says(page, one, "succeeded")

        # The page as it is when another answer comes before its feed says so: its live updates held back.
        await page.evaluate("() => { liveGeneration += 1; }")
        late = (await pending_of(engine, two))["approval_id"]
        await call(client, "answer_approval", approval_id=late, decision="deny", message="by the orchestrator")
        await card.get_by_role("button", name="Allow").click()
        note = page.locator("#approval-note")
        await note.wait_for()
        said = await note.inner_text()
        assert await card.get_by_role("button", name="Allow").is_enabled(), "the buttons work again"
        await ended(engine, two)
        listed = engine.approvals.list()
    assert f"Could not allow Write of <b>second</b>: approval {late} is already answered: denied by client" in said
    assert [(a["status"], a["decided_by"], a["message"]) for a in listed] == [
        ("denied", "client", "by the orchestrator"),
        ("denied", "client", "by the orchestrator"),
    ], "the refused answer changed nothing"
    assert not first.exists() and not second.exists()
