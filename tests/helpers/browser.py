"""A headless chromium page (Debian's chromium driven by Playwright) on the dashboard.

``missing`` says why there is no browser (Playwright not installed, no chromium at ``$EFFECTD_CHROMIUM``,
else /usr/bin/chromium), or is None; tests/e2e/browser/conftest.py skips the browser tests with it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from effectd.config.settings import Settings
from effectd.engine.core import Engine
from effectd.harness.profiles import profile_from_config
from tests.helpers.http import http_client, serving

CHROMIUM = os.environ.get("EFFECTD_CHROMIUM", "/usr/bin/chromium")


missing = (
    "playwright is not installed (pip install playwright)"
    if importlib.util.find_spec("playwright") is None
    else f"no chromium at {CHROMIUM} (apt-get install chromium, or set EFFECTD_CHROMIUM)"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK))
    else None
)
BROWSER = [
    pytest.mark.anyio,
    pytest.mark.skipif(missing is not None, reason=f"browser tests need a browser: {missing}"),
]
"""The marks of every browser test module: ``pytestmark = BROWSER``."""


CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


WAIT_MS = 20_000  # every wait in the page is bounded by this


@asynccontextmanager
async def browser(tmp_path: Path) -> AsyncIterator[Any]:
    """A fresh headless chromium page; fails the test if the page raised a JavaScript error."""
    from playwright.async_api import async_playwright

    errors: list[str] = []
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900},
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.set_default_timeout(WAIT_MS)
            page.on("pageerror", lambda error: errors.append(str(error)))
            yield page
        finally:
            await context.close()
    assert not errors, f"the page raised: {errors}"


@asynccontextmanager
async def dashboard(engine: Engine, tmp_path: Path, token: str | None = None) -> AsyncIterator[tuple[str, Client, Any]]:
    """The engine served over HTTP, an MCP client on it and a browser page: (base URL, client, page)."""
    async with serving(engine, token=token) as url, http_client(url, token) as client, browser(tmp_path) as page:
        yield url, client, page


async def status_in_page(page: Any, effect_id: str) -> str:
    return str(await page.locator(f'#effects tr[data-effect-id="{effect_id}"] td.status').inner_text()).strip()


async def wait_for_status(page: Any, effect_id: str, status: str) -> None:
    await page.wait_for_function(
        "([id, status]) => { const td = document.querySelector(`#effects tr[data-effect-id='${id}'] td.status`);"
        " return td !== null && td.textContent.trim().startsWith(status); }",
        arg=[effect_id, status],
    )


def with_fake_harness(settings: Settings) -> Settings:
    fake = profile_from_config(
        "fake", {"command": [sys.executable, "-m", "effectd.harness.fake", "{args}", "{prompt}"], "parser": "claude"}
    )
    return replace(settings, harnesses={**settings.harnesses, "fake": fake})
