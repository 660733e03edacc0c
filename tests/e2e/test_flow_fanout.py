"""Fan-out: a step with `for_each` becomes one effect per item once its needs are met."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from effectd.config.settings import Settings
from effectd.engine.core import Engine
from tests.helpers.mcp import call, call_error, connected
from tests.helpers.processes import effectd_bin, py

pytestmark = pytest.mark.anyio

SHOW = "import sys, json; print(json.dumps(sys.argv[1:]))"
SLEEP_OR_FAIL = "import sys, time; s = float(sys.argv[1]); time.sleep(abs(s)); sys.exit(s < 0)"  # < 0: fails
WORK = (
    "import json, os, sys, time; time.sleep(float(sys.argv[1])); print('did', sys.argv[2], flush=True); "
    "json.dump({'file': sys.argv[2], 'n': int(sys.argv[3])}, open(os.environ['EFFECTD_RESULT_FILE'], 'w'))"
)


def plan(items: Any) -> list[str]:
    """A plan step: prints a line and writes {"files": items} as its result."""
    code = (
        "import json, os, sys; print('planned', flush=True); "
        "json.dump({'files': json.loads(sys.argv[1])}, open(os.environ['EFFECTD_RESULT_FILE'], 'w'))"
    )
    return py(code, json.dumps(items))


def by_id(flow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["step_id"]: step for step in flow["steps"]}


async def output(client: Client, effect_id: str) -> str:
    return str((await call(client, "stream_effect", effect_id=effect_id))["data"])


async def test_a_plan_list_fans_out_into_concurrent_children_whose_results_and_outputs_come_back_in_order(
    client: Client,
):
    files = [{"path": f"f{i}.py", "n": i * 10} for i in range(6)]
    started = time.monotonic()
    flow = await call(
        client,
        "dispatch_flow",
        steps=[
            {"id": "plan", "command": plan(files)},
            {
                "id": "work",
                "needs": ["plan"],
                "for_each": "{{steps.plan.result.files}}",
                "command": py(WORK, "1.0", "{{item.path}}", "{{item.n}}"),
            },
            {"id": "review", "needs": ["work"], "command": py(SHOW, "{{steps.work.result}}", "{{steps.work.output}}")},
        ],
    )
    wall = time.monotonic() - started
    assert flow["status"] == "succeeded", flow
    work = by_id(flow)["work"]
    assert [c["index"] for c in work["children"]] == list(range(6))
    assert all(c["status"] == "succeeded" and c["step_id"] == "work" for c in work["children"])
    assert wall < 4.5, f"6 children of 1 s each ran one after another ({wall:.1f} s)"
    starts = sorted(c["started_at"] for c in work["children"])
    ends = sorted(c["finished_at"] for c in work["children"])
    assert starts[-1] < ends[0], "the children did not overlap"
    parent = await call(client, "poll_effect", effect_id=work["effect_id"])
    assert parent["result"] == [{"file": f"f{i}.py", "n": i * 10} for i in range(6)]
    assert await output(client, work["effect_id"]) == "\n".join(f"did f{i}.py" for i in range(6))
    review = json.loads(await output(client, by_id(flow)["review"]["effect_id"]))
    assert json.loads(review[0]) == parent["result"]
    assert review[1] == "\n".join(f"did f{i}.py" for i in range(6))
    child = await call(client, "poll_effect", effect_id=work["children"][3]["effect_id"])
    assert child["label"] == "work[3]" and child["flow_id"] == flow["flow_id"]


async def test_item_and_index_fill_a_literal_list_and_the_flow_cap_holds(settings: Settings):
    async with connected(settings, max_concurrency=16) as (engine, client):
        flow = await call(
            client,
            "dispatch_flow",
            max_concurrency=2,
            steps=[
                {
                    "id": "each",
                    "for_each": ["a", {"x": 1}, 7],
                    "command": py("import sys, time; time.sleep(0.3); print(sys.argv[1:])", "{{index}}", "{{item}}"),
                }
            ],
        )
        assert flow["status"] == "succeeded"
        children = by_id(flow)["each"]["children"]
        outputs = [await output(client, c["effect_id"]) for c in children]
        assert outputs == ["['0', 'a']\n", "['1', '{\"x\": 1}']\n", "['2', '7']\n"]
        # never more than 2 at once: the third starts after one of the first two ended
        first_end = min(c["finished_at"] for c in children[:2])
        assert children[2]["started_at"] >= first_end


@pytest.mark.parametrize("policy", ["fail_fast", "continue"])
async def test_a_failing_child_fails_the_step(client: Client, policy: str):
    flow = await call(
        client,
        "dispatch_flow",
        policy=policy,
        steps=[
            {
                "id": "each",
                "for_each": [0, -1.5, 4, 4],  # item 1 fails after 1.5 s, while items 2 and 3 still run
                "command": py(
                    "import sys, time; s = float(sys.argv[1]); time.sleep(abs(s)); sys.exit(s < 0)", "{{item}}"
                ),
            },
            {"id": "after", "needs": ["each"], "command": py("")},
        ],
    )
    assert flow["status"] == "failed"
    each = by_id(flow)["each"]
    assert each["status"] == "failed" and "item 1 failed" in each["error"]
    statuses = [c["status"] for c in each["children"]]
    assert statuses[:2] == ["succeeded", "failed"]
    if policy == "fail_fast":
        assert statuses[2:] == ["cancelled", "cancelled"]
    else:
        assert statuses[2:] == ["succeeded", "succeeded"]
    assert by_id(flow)["after"]["status"] == "skipped"


async def test_an_empty_list_succeeds_with_no_children(client: Client):
    flow = await call(
        client,
        "dispatch_flow",
        steps=[
            {"id": "plan", "command": plan([])},
            {"id": "work", "needs": ["plan"], "for_each": "{{steps.plan.result.files}}", "command": py("")},
            {"id": "after", "needs": ["work"], "command": py(SHOW, "{{steps.work.result}}")},
        ],
    )
    assert flow["status"] == "succeeded"
    assert by_id(flow)["work"]["children"] == []
    assert json.loads(await output(client, by_id(flow)["after"]["effect_id"])) == ["[]"]


async def test_a_rendered_non_list_or_too_long_list_fails_the_step_clearly(client: Client):
    flow = await call(
        client,
        "dispatch_flow",
        policy="continue",
        steps=[
            {"id": "plan", "command": plan({"not": "a list"})},
            {"id": "big", "command": plan(list(range(1001)))},
            {"id": "work", "needs": ["plan"], "for_each": "{{steps.plan.result.files}}", "command": py("")},
            {"id": "many", "needs": ["big"], "for_each": "{{steps.big.result.files}}", "command": py("")},
        ],
    )
    steps = by_id(flow)
    assert steps["work"]["status"] == "failed" and "must be a JSON list, not dict" in steps["work"]["error"]
    assert steps["many"]["status"] == "failed" and "1001 items" in steps["many"]["error"]
    assert steps["work"]["children"] == [] and steps["many"]["children"] == []


async def test_bad_for_each_is_refused_before_anything_is_written(client: Client):
    too_long = await call_error(
        client, "dispatch_flow", steps=[{"id": "a", "for_each": list(range(1001)), "command": py("")}]
    )
    assert "1001 items" in too_long and "1000" in too_long
    not_needed = await call_error(
        client,
        "dispatch_flow",
        steps=[{"id": "p", "command": py("")}, {"id": "a", "for_each": "{{steps.p.result}}", "command": py("")}],
    )
    assert "does not need" in not_needed
    stray = await call_error(client, "dispatch_flow", steps=[{"id": "a", "command": py(SHOW, "{{item}}")}])
    assert "for_each" in stray
    assert (await call(client, "list_effects"))["effects"] == []


async def test_a_fan_out_cut_by_a_restart_finds_its_children_again_and_never_dispatches_twice(settings: Settings):
    async with connected(settings, keep_queued=True) as (engine, client):
        steps = [{"id": "each", "for_each": [1, 2], "command": py("import time; time.sleep(30)")}]
        flow = await call(client, "dispatch_flow", steps=steps, background=True)

        async def both_running() -> bool:
            children = by_id(await call(client, "poll_flow", flow_id=flow["flow_id"]))["each"]["children"]
            return len(children) == 2 and all(c["status"] == "running" for c in children)

        for _ in range(1000):
            if await both_running():
                break
            await anyio.sleep(0.02)
        assert await both_running()
    async with connected(settings) as (engine, client):  # the parent was left queued; its children stopped
        record = await call(client, "poll_flow", flow_id=flow["flow_id"], wait_s=20)
        each = by_id(record)["each"]
        assert record["status"] == "cancelled" and each["status"] == "cancelled"
        assert [c["cancel_reason"] for c in each["children"]] == ["shutdown", "shutdown"]
        group = await call(client, "list_effects", group=flow["flow_id"])
        assert len(group["effects"]) == 3  # the parent and its two children: none dispatched twice


async def test_effectd_show_lists_a_flows_children_under_their_step(settings: Settings):
    async with connected(settings) as (_, client):
        flow = await call(
            client,
            "dispatch_flow",
            policy="continue",
            steps=[{"id": "each", "for_each": [0, -0.1, 0], "command": py(SLEEP_OR_FAIL, "{{item}}")}],
        )
    done = await anyio.run_process(
        [effectd_bin(), "show", flow["flow_id"], "--db", str(settings.db)], check=False, env={**os.environ}
    )
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    (each,) = shown["steps"]
    assert each["status"] == "failed"
    assert [(c["index"], c["status"]) for c in each["children"]] == [(0, "succeeded"), (1, "failed"), (2, "succeeded")]
    assert [c["effect_id"] for c in each["children"]] == [c["effect_id"] for c in by_id(flow)["each"]["children"]]


async def test_the_dashboard_flow_graph_counts_a_steps_children(engine: Engine, tmp_path: Path):
    from tests.helpers.browser import dashboard, missing

    if missing is not None:
        pytest.skip(missing)
    steps = [
        {"id": "plan", "command": plan(["a", "b", "c"])},
        {"id": "work", "needs": ["plan"], "for_each": "{{steps.plan.result.files}}", "command": py(SHOW, "{{item}}")},
    ]
    async with dashboard(engine, tmp_path) as (url, client, page):
        flow = await call(client, "dispatch_flow", steps=steps, flow_id="flw_fan")
        assert flow["status"] == "succeeded"
        await page.goto(f"{url}/#flow=flw_fan")
        node = page.locator('#dag g.node[data-step-id="work"]')
        await page.wait_for_function(
            "() => { const n = document.querySelector('#dag g.node[data-step-id=\"work\"] text.node-sub');"
            " return n !== null && n.textContent.includes('3/3 items'); }"
        )
        assert await node.get_attribute("data-children") == "3"


async def test_cancelling_a_fanned_out_step_cancels_its_children(client: Client):
    flow = await call(
        client,
        "dispatch_flow",
        background=True,
        steps=[{"id": "each", "for_each": [1, 2, 3], "command": py("import time; time.sleep(30)")}],
    )
    parent = by_id(flow)["each"]["effect_id"]

    async def running() -> int:
        record = await call(client, "poll_flow", flow_id=flow["flow_id"])
        return sum(1 for c in by_id(record)["each"]["children"] if c["status"] == "running")

    with anyio.fail_after(20):
        while await running() < 3:  # noqa: ASYNC110 - polled over MCP, with a bound
            await anyio.sleep(0.02)
    await call(client, "cancel_effect", effect_id=parent)
    record = await call(client, "poll_flow", flow_id=flow["flow_id"], wait_s=20)
    each = by_id(record)["each"]
    assert record["status"] == "cancelled" and each["status"] == "cancelled" and each["cancel_reason"] == "user"
    assert [c["status"] for c in each["children"]] == ["cancelled"] * 3


async def test_a_fan_out_journals_each_items_argv_once_not_again_when_it_starts(settings: Settings) -> None:
    items = [f"{i:03d}" + "x" * 9997 for i in range(20)]  # 20 items of 10 KB, each in its child's argv
    async with connected(settings) as (_, client):
        steps = [{"id": "work", "for_each": items, "command": py("pass", "{{item}}")}]
        flow = await call(client, "dispatch_flow", steps=steps, wait_s=50, max_concurrency=4)
        assert flow["status"] == "succeeded"
        children = (await call(client, "list_effects", group=flow["flow_id"], limit=50))["effects"]
    assert sorted(c["command"][-1] for c in children if c["command"][-1] != "{{item}}") == items
    with sqlite3.connect(f"file:{settings.db}?mode=ro", uri=True) as db:
        (started,) = db.execute("SELECT SUM(LENGTH(data)) FROM events WHERE type = 'EFFECT_STARTED'").fetchone()
        (commands,) = db.execute("SELECT SUM(LENGTH(command)) FROM effects").fetchone()
        stored = sum(
            length
            for (length,) in db.execute("SELECT LENGTH(data) FROM events UNION ALL SELECT LENGTH(spec) FROM effects")
        )
    assert started < 20 * 500, f"EFFECT_STARTED repeats the argv: {started} bytes"
    # The projection's `command` holds no argv that its spec already has: it ran as requested.
    assert commands < 21 * 100, f"effects.command repeats the argv: {commands} bytes"
    # Each item's bytes are stored four times: the parent's list and the child's argv, in the event
    # log and in the projection's spec; the bound leaves room for the JSON around them, not a fifth copy.
    items_bytes = sum(map(len, items))
    assert stored < 4.3 * items_bytes, f"the journal holds {stored / items_bytes:.1f}x the items' bytes"
