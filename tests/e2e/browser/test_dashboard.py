"""The dashboard in a real headless browser (Debian's chromium driven by Playwright): effects dispatched
through MCP appear, change without a reload, stream their output, can be cancelled, and a group's timeline
shows what ran side by side.

Skipped when Playwright is not installed or no chromium is found (`$EFFECTD_CHROMIUM`, else
/usr/bin/chromium). `EFFECTD_SCREENSHOT=PATH` makes the screenshot test also write its picture to PATH
(docs/dashboard.png was made that way).
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import anyio

from effectd.config.settings import Settings
from effectd.engine.core import Engine
from tests.helpers.browser import BROWSER, dashboard, wait_for_status, with_fake_harness
from tests.helpers.http import TOKEN, WAIT_FOR_FILE
from tests.helpers.mcp import call, read_until
from tests.helpers.processes import pid_alive, py

pytestmark = BROWSER

# Prints `[NAME] step i/N` every DELAY seconds (argv: N DELAY NAME): output that keeps coming.
WORK = (
    "import sys, time\n"
    "for i in range(int(sys.argv[1])):\n"
    "    print(f'[{sys.argv[3]}] step {i + 1}/{sys.argv[1]}', flush=True)\n"
    "    time.sleep(float(sys.argv[2]))\n"
)


async def test_the_page_lists_effects_dispatched_through_mcp(engine: Engine, tmp_path: Path) -> None:
    async with dashboard(engine, tmp_path) as (url, client, page):
        first = await call(client, "dispatch_effect", command=py("print('one')"), label="first effect", group="pair")
        second = await call(client, "dispatch_effect", command=py("print('two')"), label="second effect")
        await page.goto(url)
        for record in (first, second):
            row = page.locator(f'#effects tr[data-effect-id="{record["effect_id"]}"]')
            await row.wait_for()
            assert record["label"] in await row.locator("td.what").inner_text()
            await wait_for_status(page, record["effect_id"], "succeeded")
        # The newest first, and the group in the sidebar.
        ids = await page.eval_on_selector_all("#effects tbody tr", "rows => rows.map(r => r.dataset.effectId)")
        assert ids[:2] == [second["effect_id"], first["effect_id"]]
        await page.locator('#groups li[data-id="pair"]').wait_for()


async def test_a_status_change_appears_without_a_reload(engine: Engine, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    async with dashboard(engine, tmp_path) as (url, client, page):
        await page.goto(url)
        await page.evaluate("window.__same_page = true")
        record = await call(client, "dispatch_effect", command=py(WAIT_FOR_FILE, str(gate)), background=True)
        await read_until(client, record["effect_id"], "started")
        await wait_for_status(page, record["effect_id"], "running")
        gate.touch()
        await wait_for_status(page, record["effect_id"], "succeeded")
        assert await page.evaluate("window.__same_page === true"), "the page was reloaded"
        assert await page.locator("#live.on").count() == 1


async def test_output_streams_into_the_detail_panel(engine: Engine, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    two_lines = WAIT_FOR_FILE.replace("'started'", "'first line'").replace("'released'", "'second line'")
    async with dashboard(engine, tmp_path) as (url, client, page):
        record = await call(client, "dispatch_effect", command=py(two_lines, str(gate)), background=True)
        await page.goto(url)
        await page.locator(f'#effects tr[data-effect-id="{record["effect_id"]}"]').click()
        await page.wait_for_function("() => document.querySelector('#output').textContent.includes('first line')")
        assert "second line" not in await page.locator("#output").inner_text()
        assert await page.locator("#detail-id").inner_text() == record["effect_id"]
        gate.touch()
        await page.wait_for_function("() => document.querySelector('#output').textContent.includes('second line')")
        await page.wait_for_function("() => document.querySelector('#output-state').textContent.includes('ended')")
        assert await page.locator("#output").text_content() == "first line\nsecond line\n"
        # The view is in the URL: opening it again shows the same effect.
        assert f"effect={record['effect_id']}" in page.url


async def test_the_cancel_button_kills_a_running_effect(engine: Engine, tmp_path: Path) -> None:
    sleeper = "import time; print('started', flush=True); time.sleep(60)"
    async with dashboard(engine, tmp_path) as (url, client, page):
        record = await call(client, "dispatch_effect", command=py(sleeper), background=True, grace_s=5)
        await read_until(client, record["effect_id"], "started")
        pid = (await call(client, "poll_effect", effect_id=record["effect_id"]))["pid"]
        assert pid is not None and pid_alive(pid)
        await page.goto(url)
        await wait_for_status(page, record["effect_id"], "running")
        await page.locator(f'#effects tr[data-effect-id="{record["effect_id"]}"] button.cancel').click()
        await wait_for_status(page, record["effect_id"], "cancelled")
        after = await call(client, "poll_effect", effect_id=record["effect_id"])
        assert after["status"] == "cancelled" and after["cancel_reason"] == "user"
        assert after["cancel_message"] == "from the dashboard"
        assert not pid_alive(pid), f"process {pid} of the cancelled effect is still alive"
        assert await page.locator(f'#effects tr[data-effect-id="{record["effect_id"]}"] button.cancel').is_hidden()


async def test_cancelling_a_group_from_its_panel_cancels_every_running_effect(engine: Engine, tmp_path: Path) -> None:
    sleeper = "import time; print('started', flush=True); time.sleep(60)"
    async with dashboard(engine, tmp_path) as (url, client, page):
        ids = []
        for _ in range(2):
            record = await call(client, "dispatch_effect", command=py(sleeper), background=True, group="sleepers")
            await read_until(client, record["effect_id"], "started")
            ids.append(record["effect_id"])
        await page.goto(f"{url}/#group=sleepers")
        await page.locator("#scope-cancel").click()
        for effect_id in ids:
            await wait_for_status(page, effect_id, "cancelled")
            assert (await call(client, "poll_effect", effect_id=effect_id))["cancel_reason"] == "user"


async def test_the_timeline_shows_overlapping_bars_for_effects_that_ran_side_by_side(
    engine: Engine, tmp_path: Path
) -> None:
    both = tmp_path / "both"
    # a and b each wait until both have started (so they surely overlap); c runs after a.
    meet = (
        "import os, sys, time\n"
        "open(sys.argv[1] + '.' + sys.argv[2], 'w').close()\n"
        "deadline = time.monotonic() + 60\n"
        "while not all(os.path.exists(sys.argv[1] + '.' + n) for n in 'ab') and time.monotonic() < deadline:\n"
        "    time.sleep(0.02)\n"
        "time.sleep(0.3)\n"
    )
    async with dashboard(engine, tmp_path) as (url, client, page):
        a = await call(
            client, "dispatch_effect", command=py(meet, str(both), "a"), label="a", group="g", background=True
        )
        b = await call(
            client, "dispatch_effect", command=py(meet, str(both), "b"), label="b", group="g", background=True
        )
        c = await call(
            client, "dispatch_effect", command=py("print('c')"), label="c", group="g", depends_on=[a["effect_id"]]
        )
        done = await call(client, "await_group", group="g", timeout_s=30)
        assert done["complete"] and c["status"] == "succeeded"
        await page.goto(f"{url}/#group=g")
        await page.wait_for_function("() => document.querySelectorAll('#timeline rect.bar-run').length === 3")
        bars = await page.eval_on_selector_all(
            "#timeline rect.bar-run",
            "rects => Object.fromEntries(rects.map(r => [r.dataset.effectId,"
            " [parseFloat(r.getAttribute('x')), parseFloat(r.getAttribute('x')) + parseFloat(r.getAttribute('width')),"
            " r.dataset.status]]))",
        )
    (a0, a1, a_status), (b0, b1, _), (c0, _, _) = (bars[e["effect_id"]] for e in (a, b, c))
    assert a_status == "succeeded"
    assert a0 < b1 and b0 < a1, f"a {a0:.0f}-{a1:.0f} and b {b0:.0f}-{b1:.0f} should overlap"
    assert c0 >= a1 - 1, f"c starts at {c0:.0f}, before a ended at {a1:.0f}"


async def test_a_flow_shows_its_steps_layered_by_dependency(engine: Engine, tmp_path: Path) -> None:
    steps = [
        {"id": "fetch", "command": py("print('f')")},
        {"id": "left", "needs": ["fetch"], "command": py("print('l')")},
        {"id": "right", "needs": ["fetch"], "command": py("print('r')")},
        {"id": "join", "needs": ["left", "right"], "command": py("print('j')")},
    ]
    async with dashboard(engine, tmp_path) as (url, client, page):
        flow = await call(client, "dispatch_flow", steps=steps, flow_id="flw_diamond")
        assert flow["status"] == "succeeded"
        await page.goto(f"{url}/#flow=flw_diamond")
        await page.wait_for_function("() => document.querySelectorAll('#dag g.node.st-succeeded').length === 4")
        x = await page.eval_on_selector_all(
            "#dag g.node",
            "nodes => Object.fromEntries(nodes.map(n => [n.dataset.stepId, n.transform.baseVal[0].matrix.e]))",
        )
        edges = await page.eval_on_selector_all(
            "#dag path.edge", "paths => paths.map(p => p.dataset.from + '>' + p.dataset.to)"
        )
        assert x["fetch"] < x["left"] == x["right"] < x["join"]
        assert sorted(edges) == ["fetch>left", "fetch>right", "left>join", "right>join"]
        assert await page.locator("#flows li.current").count() == 1


async def test_with_a_token_the_page_asks_for_it_and_then_works(engine: Engine, tmp_path: Path) -> None:
    async with dashboard(engine, tmp_path, token=TOKEN) as (url, client, page):
        record = await call(client, "dispatch_effect", command=py("print('secret')"), label="behind a token")
        await page.goto(url)
        await page.locator("#token-dialog").wait_for()
        await page.fill("#token-input", TOKEN)
        await page.click("#token-form button")
        await wait_for_status(page, record["effect_id"], "succeeded")
        # Given once in the fragment (here to a new tab, whose session storage is empty), the token is
        # kept for the tab and taken out of the URL.
        tab = await page.context.new_page()
        await tab.goto(f"{url}/#token={TOKEN}")
        await wait_for_status(tab, record["effect_id"], "succeeded")
        assert TOKEN not in tab.url
        assert await tab.locator("#token-dialog").is_hidden()
        assert await tab.evaluate("sessionStorage.getItem('effectd-token')") == TOKEN


# What the page shows of a running flow: per step, its effect id and status in the graph, in the table
# and in the timeline; the selected effect and its output; where the graph's status marks are drawn.
SEEN = """() => {
  const status = (el) => [...el.classList].find((c) => c.startsWith('st-'))?.slice(3);
  const all = (selector, f) => Object.fromEntries([...document.querySelectorAll(selector)].map(f));
  const box = (el) => { const r = el.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; };
  return {
    title: document.querySelector('#scope-title').textContent,
    table: document.querySelector('#table-title').textContent,
    nodes: all('#dag g.node', (n) => [n.dataset.stepId, {effect_id: n.dataset.effectId, status: status(n),
      mark: box(n.querySelector('rect.node-mark')), fill: getComputedStyle(n.querySelector('rect.node-mark')).fill}]),
    rows: all('#effects tbody tr', (r) => [r.dataset.effectId, r.querySelector('td.status').textContent.trim()]),
    bars: all('#timeline rect.bar-run', (b) => [b.dataset.effectId, b.dataset.status]),
    detail: document.querySelector('#detail-id').textContent,
    output: document.querySelector('#output').textContent,
    viewport: [window.innerWidth, window.innerHeight],
  };
}"""


def png_pixels(png: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB bytes) of an 8-bit RGB or RGBA, non-interlaced PNG (what chromium writes)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    at, header, compressed = 8, b"", b""
    while at < len(png):
        (length,), kind = struct.unpack(">I", png[at : at + 4]), png[at + 4 : at + 8]
        body = png[at + 8 : at + 8 + length]
        at += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            compressed += body
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, f"unexpected PNG format {depth}/{colour}/{interlace}"
    size = 3 if colour == 2 else 4  # bytes per pixel
    stride = width * size
    raw = zlib.decompress(compressed)
    assert len(raw) == height * (stride + 1), "the pixel data does not match the PNG's dimensions"
    rows: list[bytes] = []
    above = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1) + 1
        kind, row = raw[start - 1], bytearray(raw[start : start + stride])
        if kind != 0:  # undo the row's filter (PNG specification, section 9)
            for i in range(stride):
                left = row[i - size] if i >= size else 0
                up = above[i]
                if kind == 1:
                    guess = left
                elif kind == 2:
                    guess = up
                elif kind == 3:
                    guess = (left + up) >> 1
                else:  # Paeth: the neighbour nearest to left + up - corner, ties to left, then up
                    corner = above[i - size] if i >= size else 0
                    p = left + up - corner
                    guess = min((abs(p - left), 0, left), (abs(p - up), 1, up), (abs(p - corner), 2, corner))[2]
                row[i] = (row[i] + guess) & 0xFF
        above = row
        rgb_row = bytearray(row)
        if size == 4:
            del rgb_row[3::4]  # the alpha channel
        rows.append(bytes(rgb_row))
    return width, height, rows


def pixel(rows: list[bytes], x: float, y: float) -> tuple[int, ...]:
    row = rows[int(y)]
    return tuple(row[int(x) * 3 : int(x) * 3 + 3])


def rgb(css: str) -> tuple[int, ...]:
    """`rgb(47, 125, 225)` as (47, 125, 225)."""
    return tuple(int(part) for part in css[css.index("(") + 1 : css.index(")")].split(",")[:3])


async def test_a_screenshot_of_a_running_flow(settings: Settings, tmp_path: Path) -> None:
    """A running flow with its DAG, timeline, steps and one step's live output (docs/dashboard.png): the page
    shows each step with its status, the running one marked running, and the picture is of that page."""
    steps = [
        {"id": "checkout", "command": py(WORK, "2", "0.2", "checkout")},
        {"id": "lint", "needs": ["checkout"], "command": py(WORK, "4", "0.3", "lint")},
        {"id": "unit-tests", "needs": ["checkout"], "command": py(WORK, "200", "0.25", "unit")},
        {"id": "review", "needs": ["checkout"], "harness": "fake", "prompt": "review the diff",
         "args": ["--steps", "200", "--delay", "0.25", "--cost", "0.42"]},
        {"id": "integration", "needs": ["checkout"], "command": py(WORK, "200", "0.4", "integration")},
        {"id": "package", "needs": ["lint", "unit-tests"], "command": py(WORK, "3", "0.3", "package")},
        {"id": "report", "needs": ["package", "integration", "review"], "harness": "fake", "prompt": "summarise",
         "args": ["--steps", "3"]},
    ]  # fmt: skip
    async with Engine.open(with_fake_harness(settings)) as engine, dashboard(engine, tmp_path) as (url, client, page):
        await page.set_viewport_size({"width": 1600, "height": 1000})
        warmup = await call(client, "dispatch_effect", command=py("print('ok')"), label="smoke test", group="checks")
        flaky = await call(client, "dispatch_effect", command=py("import sys; print('boom'); sys.exit(3)"),
                           label="flaky probe", group="checks")  # fmt: skip
        assert warmup["status"] == "succeeded" and flaky["status"] == "failed"
        flow = await call(client, "dispatch_flow", steps=steps, flow_id="flw_release_check", background=True)
        effect_of = {s["step_id"]: s["effect_id"] for s in flow["steps"]}
        unit, lint = effect_of["unit-tests"], effect_of["lint"]
        await call(client, "await_group", effect_ids=[lint], timeout_s=30)
        await read_until(client, unit, "step 12/")
        await page.goto(f"{url}/#flow=flw_release_check&effect={unit}")
        await page.wait_for_function(
            "() => document.querySelectorAll('#dag g.node').length === 7"
            " && document.querySelectorAll('#effects tbody tr').length === 7"
            " && document.querySelector('#output').textContent.includes('step 12/')"
        )
        seen = await page.evaluate(SEEN)
        shot = tmp_path / "dashboard.png"
        await page.screenshot(path=str(shot))
        if os.environ.get("EFFECTD_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["EFFECTD_SCREENSHOT"])
        await call(client, "cancel_group", group="flw_release_check")
        with anyio.fail_after(30):
            assert (await call(client, "poll_flow", flow_id="flw_release_check", wait_s=20))["status"] == "cancelled"

    # The page: the flow's seven steps in the graph and in the table, one row per effect. lint ended
    # before the page was opened and unit-tests was printing, so what they show is settled; steps that
    # need unit-tests cannot have started; the others wait or run.
    assert seen["title"] == "flw_release_check" and seen["table"] == "Steps of the flow (7)"
    assert {step: node["effect_id"] for step, node in seen["nodes"].items()} == effect_of
    assert set(seen["rows"]) == set(effect_of.values())
    status = {step: node["status"] for step, node in seen["nodes"].items()}
    assert status["checkout"] == status["lint"] == "succeeded" and status["unit-tests"] == "running", status
    assert status["package"] in ("pending", "queued") and status["report"] in ("pending", "queued"), status
    assert status["review"] in ("queued", "running") and status["integration"] in ("queued", "running"), status
    for step in ("checkout", "lint", "unit-tests", "package", "report"):
        assert seen["rows"][effect_of[step]].startswith(status[step]), (step, seen["rows"][effect_of[step]])
    bars = [seen["bars"].get(effect_of[step]) for step in ("checkout", "lint", "unit-tests")]
    assert bars == ["succeeded", "succeeded", "running"], seen["bars"]
    # The detail panel: the selected step and its output as it was printed.
    assert seen["detail"] == unit
    printed = seen["output"].split("\n")[:-1]  # the complete lines
    assert len(printed) >= 12 and printed == [f"[unit] step {i}/200" for i in range(1, len(printed) + 1)]

    # The picture: the page's size, not one colour, and the graph's status marks drawn where the page
    # has them, in their colours (the running step's differs from the succeeded ones').
    width, height, rows = png_pixels(shot.read_bytes())
    assert [width, height] == seen["viewport"] == [1600, 1000]
    colours = {row[x : x + 3] for row in rows[::8] for x in range(0, width * 3, 3 * 4)}
    assert len(colours) > 50, f"the screenshot has only {len(colours)} colours"
    marks = {step: seen["nodes"][step] for step in ("checkout", "lint", "unit-tests")}
    assert rgb(marks["unit-tests"]["fill"]) != rgb(marks["checkout"]["fill"]) == rgb(marks["lint"]["fill"])
    for step, node in marks.items():
        drawn, expected = pixel(rows, *node["mark"]), rgb(node["fill"])
        assert all(abs(a - b) <= 8 for a, b in zip(drawn, expected, strict=True)), (step, drawn, expected)
