"""A harness that reports bogus usage (negative, NaN or infinite cost; negative tokens) cannot switch a
budget off: the figure is refused and named on the record (`usage_refused`), it never lowers what was
spent, and every record and budget stays valid structured output. Through the in-memory client and over
real stdio, with the fake harness printing the bogus figure (`--bogus-cost`, `--bogus-input-tokens`)."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import pytest
from mcp import Client

from effectd.config.settings import Settings
from effectd.harness.profiles import profile_from_config
from tests.helpers.mcp import call, call_error, connected
from tests.helpers.processes import stdio_params

pytestmark = pytest.mark.anyio

FAKE_COMMAND = [sys.executable, "-m", "effectd.harness.fake", "{args}", "{prompt}"]
ONE_STEP = ["--steps", "1", "--delay", "0"]


class Case(NamedTuple):
    bogus: list[str]  # the fake's arguments for the run that reports bogus usage
    limits: dict[str, float]  # the budget
    honest: list[str]  # a run that honestly spends half the budget
    refused: str  # what the bogus run's `usage_refused` names


CASES = {
    "negative cost": Case(["--bogus-cost", "-100"], {"max_cost_usd": 1}, ["--cost", "0.5"], "total_cost_usd -100"),
    "NaN cost": Case(["--bogus-cost", "nan"], {"max_cost_usd": 1}, ["--cost", "0.5"], "total_cost_usd nan"),
    "infinite cost": Case(["--bogus-cost", "inf"], {"max_cost_usd": 1}, ["--cost", "0.5"], "total_cost_usd inf"),
    # Each honest run: one message of 12 input + 38 output tokens = 50 tokens, half of max_tokens 100.
    "negative tokens": Case(
        ["--bogus-input-tokens", "-1000000", "--turn-tokens", "0"],
        {"max_tokens": 100},
        ["--turn-tokens", "38"],
        "input_tokens -1000000",
    ),
}


@pytest.fixture
def fake_settings(settings: Settings) -> Settings:
    fake = profile_from_config("fake", {"command": FAKE_COMMAND, "parser": "claude"})
    return replace(settings, harnesses={**settings.harnesses, "fake": fake})


@asynccontextmanager
async def over_stdio(tmp_path: Path) -> AsyncIterator[Client]:
    config = tmp_path / "effectd.toml"
    config.write_text(f'[harness.fake]\ncommand = {FAKE_COMMAND!r}\nparser = "claude"\n'.replace("'", '"'))
    params = stdio_params(tmp_path / "j.db", "--config", str(config), "--allow-any-command")
    async with Client(params, read_timeout_seconds=70) as client:
        yield client


async def bogus_usage_does_not_lift_the_budget(client: Client, case: Case) -> None:
    await call(client, "set_budget", group="g", **case.limits)
    bogus = await call(
        client, "dispatch_effect", harness="fake", prompt="bogus", args=[*ONE_STEP, *case.bogus], group="g"
    )
    assert bogus["status"] == "succeeded", bogus
    assert any(case.refused in note for note in bogus["result"]["usage_refused"]), bogus["result"]
    assert bogus["result"]["cost_usd"] is None or "max_tokens" in case.limits
    # Set again, the budget counts the bogus run as having spent nothing, and is valid structured output.
    budget = await call(client, "set_budget", group="g", **case.limits)
    spent = "spent_cost_usd" if "max_cost_usd" in case.limits else "spent_tokens"
    assert (budget[spent], budget["exceeded"]) == (0, False), budget

    ran = []
    for i in range(6):
        result = await client.call_tool(
            "dispatch_effect",
            {"harness": "fake", "prompt": f"honest {i}", "args": [*ONE_STEP, *case.honest], "group": "g"},
        )
        if result.is_error:
            break
        ran.append(i)
    assert ran == [0, 1], "two honest runs spend the budget; the third is refused"
    refused = await call_error(client, "dispatch_effect", harness="fake", prompt="more", group="g")
    assert "budget of group 'g' is spent" in refused and "nan" not in refused, refused
    summary = (await call(client, "list_effects", group="g"))["summary"]
    assert summary["budget"]["exceeded"] is True
    if "max_cost_usd" in case.limits:
        assert summary["budget"]["spent_cost_usd"] == summary["cost_usd"] == pytest.approx(1.0)
        assert "$1.0000 spent of max_cost_usd $1.0000" in refused
    else:
        assert summary["budget"]["spent_tokens"] == 100 and "100 tokens of max_tokens 100" in refused
        assert 0 <= summary["tokens"]["input_tokens"] <= 24, "the refused count is not summed"


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_bogus_harness_usage_is_refused_and_the_budget_still_stops_spending(fake_settings, case):
    async with connected(fake_settings) as (_, client):
        await bogus_usage_does_not_lift_the_budget(client, case)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_over_stdio_bogus_harness_usage_is_refused_and_the_budget_still_stops_spending(tmp_path, case):
    async with over_stdio(tmp_path) as client:
        await bogus_usage_does_not_lift_the_budget(client, case)


NAN_RESULT_FILE = (
    "import json, os; open(os.environ['EFFECTD_RESULT_FILE'], 'w').write('{\"cost_usd\": NaN}'); "
    "print(json.dumps({'type': 'result', 'subtype': 'success', 'total_cost_usd': 0.25, 'result': 'ok'}))"
)


async def test_a_result_file_holding_nan_is_refused_and_the_summary_still_adds_up(settings):
    harness = profile_from_config(
        "nan", {"command": [sys.executable, "-c", NAN_RESULT_FILE, "{prompt}"], "parser": "claude"}
    )
    async with connected(settings, harnesses={**settings.harnesses, "nan": harness}) as (_, client):
        record = await call(client, "dispatch_effect", harness="nan", prompt="x", group="g")
        assert record["status"] == "succeeded" and record["result"]["cost_usd"] == 0.25
        assert record["result_error"] == "the result file is not JSON: NaN is not a JSON number"
        summary = (await call(client, "list_effects", group="g"))["summary"]
    assert summary["cost_usd"] == 0.25 and summary["count"] == 1


async def test_bogus_figures_already_in_a_journal_neither_fail_nor_lower_the_summary_and_the_budget(fake_settings):
    async with connected(fake_settings) as (_, client):
        for i in range(3):
            args = [*ONE_STEP, "--cost", "0.25"]
            await call(client, "dispatch_effect", harness="fake", prompt=f"run {i}", args=args, group="g")
    # What an effectd before the parsers refused bogus figures could have journaled.
    with sqlite3.connect(fake_settings.db) as db:
        ids = [row[0] for row in db.execute("SELECT effect_id FROM effects ORDER BY created_at")]
        planted = [("NaN", '{"input_tokens": 5}'), ("-100", '{"input_tokens": -9}')]
        for effect_id, (cost, usage) in zip(ids, planted, strict=False):
            result, progress = f'{{"cost_usd": {cost}, "usage": {usage}}}', f'{{"cost_usd": {cost}, "tokens": -9}}'
            db.execute("UPDATE effects SET result = ?, progress = ? WHERE effect_id = ?", (result, progress, effect_id))
    async with connected(fake_settings) as (_, client):
        summary = (await call(client, "list_effects", group="g"))["summary"]
        assert summary["count"] == 3 and summary["cost_usd"] == 0.25
        assert summary["tokens"]["input_tokens"] == 12, "the third run's; the NaN row counts nothing"
        budget = await call(client, "set_budget", group="g", max_cost_usd=1)
        assert budget["spent_cost_usd"] == 0.25 and budget["exceeded"] is False
