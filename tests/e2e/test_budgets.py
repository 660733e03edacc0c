"""Budgets with the fake harness: a swarm that crosses its budget is stopped (reason `budget`), later
dispatches are refused with what was spent, and the budget holds after a restart (graceful or SIGKILL)."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
from contextlib import suppress
from dataclasses import replace
from pathlib import Path

import pytest
from mcp import Client

from effectd.config.settings import Settings
from effectd.harness.profiles import profile_from_config
from effectd.journal.projection import Event
from effectd.journal.store import Journal, replay_projection
from effectd.model.records import now_iso
from tests.helpers.mcp import call, call_error, connected, wait_until
from tests.helpers.processes import SLEEP, event_count, pid_alive, py, stdio_params
from tests.helpers.programs import QUICK

pytestmark = pytest.mark.anyio

SLOW = ["--steps", "400", "--delay", "0.1"]  # 40 s unless stopped


@pytest.fixture
def budget_settings(settings: Settings) -> Settings:
    fake = profile_from_config(
        "fake", {"command": [sys.executable, "-m", "effectd.harness.fake", "{args}", "{prompt}"], "parser": "claude"}
    )
    return replace(settings, harnesses={**settings.harnesses, "fake": fake})


def rows(db: Path, sql: str) -> list[dict]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(sql)]


async def agent(client: Client, prompt: str, args: list[str], **more: object) -> dict:
    return await call(client, "dispatch_effect", harness="fake", prompt=prompt, args=args, background=True, **more)


async def test_a_swarm_that_crosses_its_cost_budget_is_stopped_with_reason_budget(budget_settings):
    async with connected(budget_settings) as (_, client):
        budget = await call(client, "set_budget", group="swarm", max_cost_usd=0.05)
        assert budget == {
            "scope": {"group": "swarm"},
            "max_cost_usd": 0.05,
            "max_tokens": None,
            "spent_cost_usd": 0.0,
            "spent_tokens": 0,
            "exceeded": False,
        }
        slow = [
            (await agent(client, f"slow {i}", [*SLOW, "--cost", "0.02"], group="swarm"))["effect_id"] for i in range(2)
        ]
        waiting = await agent(client, "after", QUICK, group="swarm", depends_on=[slow[0]])
        command = await call(client, "dispatch_effect", command=py(SLEEP, "60"), background=True, group="swarm")
        quick = [
            (await agent(client, f"quick {i}", [*QUICK, "--cost", "0.02"], group="swarm"))["effect_id"]
            for i in range(3)
        ]

        stopped = await call(client, "await_group", effect_ids=[*slow, waiting["effect_id"], *quick], timeout_s=30)

        records = {r["effect_id"]: r for r in stopped["done"]}
        assert stopped["complete"], stopped["pending"]
        assert [records[i]["status"] for i in quick] == ["succeeded"] * 3
        for effect_id in [*slow, waiting["effect_id"]]:
            assert (records[effect_id]["status"], records[effect_id]["cancel_reason"]) == ("cancelled", "budget")
            assert "$0.0600 spent of max_cost_usd $0.0500" in records[effect_id]["cancel_message"]
        assert records[waiting["effect_id"]]["started_at"] is None
        # A running command spends nothing: the budget stops only harness effects that run.
        assert (await call(client, "poll_effect", effect_id=command["effect_id"]))["status"] == "running"

        events = event_count(budget_settings.db)
        refused = await call_error(client, "dispatch_effect", harness="fake", prompt="more", group="swarm")
        assert "budget of group 'swarm' is spent" in refused and "$0.0600 spent of max_cost_usd $0.0500" in refused
        refused = await call_error(client, "dispatch_effect", command=py("pass"), group="swarm")
        assert "set_budget" in refused
        assert event_count(budget_settings.db) == events, "a refused dispatch writes nothing"

        summary = (await call(client, "list_effects", group="swarm"))["summary"]
        assert summary["budget"]["exceeded"] is True and summary["budget"]["spent_cost_usd"] == pytest.approx(0.06)
        assert summary["budget"]["scope"] == {"group": "swarm"}
        await call(client, "cancel_effect", effect_id=command["effect_id"], grace_s=0.1)


async def test_live_usage_stops_sub_agents_that_are_still_running_before_their_final_result(budget_settings):
    async with connected(budget_settings) as (_, client):
        await call(client, "set_budget", run_id="tokens-run", max_tokens=1500)
        # Each assistant message reports 12 input + 100 output tokens; each run would make 400 of them.
        ids = [
            (await agent(client, f"agent {i}", [*SLOW, "--turn-tokens", "100"], run_id="tokens-run"))["effect_id"]
            for i in range(3)
        ]
        stopped = await call(client, "await_group", effect_ids=ids, timeout_s=30)
        assert stopped["complete"] and not stopped["timed_out"]
        for record in stopped["done"]:
            assert (record["status"], record["cancel_reason"]) == ("cancelled", "budget")
            assert "of max_tokens 1500" in record["cancel_message"]
            assert record["result"] is None, "stopped before its final result"
            assert record["progress"]["tokens"] > 0  # what it streamed is kept, and counted
        listed = await call(client, "list_effects", run_id="tokens-run")
        budget = listed["summary"]["budget"]
        assert budget["scope"] == {"run_id": "tokens-run"} and budget["exceeded"] is True
        spent = sum(r["progress"]["tokens"] for r in listed["effects"])
        assert budget["spent_tokens"] == spent and 1500 <= spent < 3 * 400 * 112
        refused = await call_error(client, "dispatch_effect", command=py("pass"), run_id="tokens-run")
        assert "budget of run 'tokens-run' is spent" in refused and f"{spent} tokens of max_tokens 1500" in refused


async def test_a_flows_budget_stops_its_steps_and_is_shown_against_its_spending(budget_settings):
    steps = [
        *({"id": f"fast{i}", "harness": "fake", "prompt": "x", "args": [*QUICK, "--cost", "0.02"]} for i in range(2)),
        *({"id": f"slow{i}", "harness": "fake", "prompt": "x", "args": [*SLOW, "--cost", "0.02"]} for i in range(2)),
        {"id": "merge", "needs": ["fast0", "fast1", "slow0", "slow1"], "harness": "fake", "prompt": "x"},
    ]
    async with connected(budget_settings) as (_, client):
        flow = await call(
            client,
            "dispatch_flow",
            steps=steps,
            flow_id="flw_budget",
            budget={"max_cost_usd": 0.03},
            policy="continue",
            wait_s=30,
        )
        assert flow["status"] != "running"
        listed = await call(client, "list_effects", group="flw_budget")
        by_step = {r["step_id"]: r for r in listed["effects"]}
        assert by_step["fast0"]["status"] == by_step["fast1"]["status"] == "succeeded"
        for step in ("slow0", "slow1", "merge"):
            assert (by_step[step]["status"], by_step[step]["cancel_reason"]) == ("cancelled", "budget"), step
        budget = listed["summary"]["budget"]
        assert budget["scope"] == {"group": "flw_budget"} and budget["max_cost_usd"] == 0.03
        assert budget["spent_cost_usd"] == pytest.approx(0.04) and budget["exceeded"] is True
        # set_budget replaces the flow's budget: raised above what was spent, the group takes effects again.
        raised = await call(client, "set_budget", group="flw_budget", max_cost_usd=1)
        assert raised["exceeded"] is False and raised["spent_cost_usd"] == pytest.approx(0.04)
        again = await call(client, "dispatch_effect", harness="fake", prompt="x", args=QUICK, group="flw_budget")
        assert again["status"] == "succeeded"


async def test_the_budget_and_its_spending_hold_after_a_restart(budget_settings):
    async with connected(budget_settings) as (_, client):
        await call(client, "set_budget", group="kept", max_cost_usd=0.05)
        await call(
            client, "dispatch_effect", harness="fake", prompt="one", args=[*QUICK, "--cost", "0.02"], group="kept"
        )
    async with connected(budget_settings) as (_, client):
        listed = await call(client, "list_effects", group="kept")
        assert listed["summary"]["budget"]["spent_cost_usd"] == pytest.approx(0.02)
        assert listed["summary"]["budget"]["exceeded"] is False
        for prompt in ("two", "three"):
            args = [*QUICK, "--cost", "0.02"]
            await call(client, "dispatch_effect", harness="fake", prompt=prompt, args=args, group="kept")
        refused = await call_error(client, "dispatch_effect", harness="fake", prompt="four", group="kept")
        assert "$0.0600 spent of max_cost_usd $0.0500" in refused
    async with connected(budget_settings) as (_, client):
        refused = await call_error(client, "dispatch_effect", command=py("pass"), group="kept")
        assert "budget of group 'kept' is spent" in refused and "$0.0600 spent" in refused


async def test_budgets_are_journaled_events_that_replay_into_the_same_table(budget_settings):
    async with connected(budget_settings) as (_, client):
        await call(client, "set_budget", run_id="r", max_tokens=10)
        await call(client, "set_budget", group="g", max_cost_usd=0.01)
        await call(client, "dispatch_effect", harness="fake", prompt="x", args=[*QUICK, "--cost", "0.02"], group="g")
        await call(client, "set_budget", group="g", max_cost_usd=0.5, max_tokens=None)
        await call(client, "set_budget", group="h", max_cost_usd=0)  # reached at once: nothing may be spent
    db = budget_settings.db
    kinds = [r["type"] for r in rows(db, "select type from events where type like 'BUDGET_%' order by seq")]
    assert kinds == ["BUDGET_SET", "BUDGET_SET", "BUDGET_EXCEEDED", "BUDGET_SET", "BUDGET_SET", "BUDGET_EXCEEDED"]
    stored = rows(db, "select * from budgets order by kind, name")
    assert (await replay_projection(db))["budgets"] == stored
    by_name = {r["name"]: r for r in stored}
    assert by_name["g"]["max_cost_usd"] == 0.5 and by_name["g"]["exceeded_at"] is None
    assert by_name["h"]["exceeded_at"] is not None and by_name["r"]["max_tokens"] == 10


async def test_waiting_effects_of_a_spent_budget_are_cancelled_at_start_before_any_runs(budget_settings):
    settings = replace(budget_settings, max_concurrency=1, keep_queued=True)
    async with connected(settings) as (_, client):
        await call(client, "dispatch_effect", command=py(SLEEP, "60"), background=True)  # holds the one slot
        queued = await agent(client, "later", QUICK, group="waiting")
        assert queued["status"] == "queued"
    # What a crash between reaching the limit and cancelling would leave: a spent budget, a queued effect.
    async with Journal.open(settings.db) as journal:
        limits = {"kind": "group", "name": "waiting", "max_cost_usd": 0.01, "max_tokens": None, "set_at": now_iso()}
        spent = {"kind": "group", "name": "waiting", "exceeded_at": now_iso(), "spent_cost_usd": 0.02}
        await journal.append(Event("BUDGET_SET", None, None, limits), Event("BUDGET_EXCEEDED", None, None, spent))
    async with connected(settings) as (_, client):
        done = await call(client, "await_group", effect_ids=[queued["effect_id"]], timeout_s=30)
        (record,) = done["done"]
        assert (record["status"], record["cancel_reason"], record["started_at"]) == ("cancelled", "budget", None)
        assert "$0.0200 spent of max_cost_usd $0.0100" in record["cancel_message"]


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"max_cost_usd": 1}, "exactly one of `run_id`"),
        ({"run_id": "r", "group": "g", "max_cost_usd": 1}, "exactly one of `run_id`"),
        ({"group": "g", "max_cost_usd": -1}, "max_cost_usd"),
        ({"group": "g", "max_tokens": 1.5}, "max_tokens"),
        ({"group": "g", "max_cost": 1}, "unknown argument max_cost"),
    ],
)
async def test_set_budget_refuses_arguments_that_cannot_work_and_writes_nothing(settings, client, arguments, expected):
    text = await call_error(client, "set_budget", **arguments)
    assert expected in text, text
    assert event_count(settings.db) == 0


async def test_a_flows_budget_with_an_unknown_field_is_refused(client, settings):
    step = {"id": "a", "command": py("pass")}
    text = await call_error(client, "dispatch_flow", steps=[step], budget={"max_usd": 1})
    assert "max_usd" in text and event_count(settings.db) == 0


async def test_over_stdio_a_spent_budget_holds_after_the_server_is_killed(tmp_path: Path):
    config = tmp_path / "effectd.toml"
    config.write_text(
        f"""
result_grace_s = 0.5

[harness.fake]
command = [{sys.executable!r}, "-m", "effectd.harness.fake", "{{args}}", "{{prompt}}"]
parser = "claude"
"""
    )
    db = tmp_path / "j.db"
    params = stdio_params(db, "--config", str(config), "--allow-any-command")
    with suppress(Exception, BaseExceptionGroup):
        async with Client(params, read_timeout_seconds=70) as client:
            await call(client, "set_budget", group="g", max_cost_usd=0.03)
            slow = await agent(client, "slow", [*SLOW, "--cost", "0.02"], group="g")
            for prompt in ("a", "b"):
                args = [*QUICK, "--cost", "0.02"]
                await call(client, "dispatch_effect", harness="fake", prompt=prompt, args=args, group="g")
            stopped = await call(client, "await_group", effect_ids=[slow["effect_id"]], timeout_s=30)
            assert stopped["done"][0]["cancel_reason"] == "budget"
            probe = await call(
                client, "dispatch_effect", command=py("import os; print(os.getppid(), flush=True)"), group="other"
            )
            server_pid = int(probe["output_tail"].split()[0])
            os.kill(server_pid, signal.SIGKILL)
            await wait_until(lambda: not pid_alive(server_pid))
    async with Client(params, read_timeout_seconds=70) as client:
        refused = await call_error(client, "dispatch_effect", harness="fake", prompt="c", group="g")
        assert "budget of group 'g' is spent" in refused and "$0.0400 spent of max_cost_usd $0.0300" in refused
        listed = await call(client, "list_effects", group="g")
        assert listed["summary"]["budget"]["exceeded"] is True
