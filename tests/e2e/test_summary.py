"""`list_effects`' summary counts every effect its filter matches, not only the page it returns."""

from __future__ import annotations

import sys
from dataclasses import replace

import pytest
from mcp import Client

from effectd.app import build_server
from effectd.config.settings import build_settings
from effectd.engine.core import Engine
from tests.helpers.mcp import call
from tests.helpers.processes import py

pytestmark = pytest.mark.anyio


def with_fake_harness(settings):
    file = {
        "harness": {
            "fake": {
                "command": [sys.executable, "-m", "effectd.harness.fake", "{args}", "{prompt}"],
                "parser": "claude",
            }
        }
    }
    harnesses = build_settings(file, db=settings.db).harnesses
    return replace(settings, harnesses=harnesses)


async def test_the_summary_covers_150_effects_when_the_page_holds_10(settings):
    async with Engine.open(with_fake_harness(settings)) as engine, Client(build_server(engine)) as client:
        # The oldest three are sub-agents that report a cost and tokens: the newest page of 10 holds none.
        agents = [
            await call(client, "dispatch_effect", harness="fake", prompt=f"t{i}", args=["--cost", "0.25"], run_id="r")
            for i in range(3)
        ]
        assert all(a["status"] == "succeeded" for a in agents), agents
        failed = await call(client, "dispatch_effect", command=py("raise SystemExit(3)"), run_id="r")
        assert failed["status"] == "failed"
        # 146 more that are skipped at once (their dependency failed): no process each.
        for _ in range(146):
            skipped = await call(
                client, "dispatch_effect", command=py("pass"), depends_on=[failed["effect_id"]], run_id="r",
                background=True,
            )  # fmt: skip
            assert skipped["status"] == "skipped"
        other = await call(client, "dispatch_effect", command=py("pass"), run_id="elsewhere")
        assert other["status"] == "succeeded"

        listed = await call(client, "list_effects", run_id="r", limit=10)
        assert len(listed["effects"]) == 10
        assert {r["status"] for r in listed["effects"]} == {"skipped"}
        summary = listed["summary"]
        assert summary["count"] == 150
        assert summary["by_status"] == {"succeeded": 3, "failed": 1, "skipped": 146}
        assert summary["cost_usd"] == pytest.approx(0.75)
        per_agent = agents[0]["result"]["usage"]
        assert summary["tokens"]["input_tokens"] == 3 * per_agent["input_tokens"] > 0
        assert summary["tokens"]["output_tokens"] == 3 * per_agent["output_tokens"] > 0

        # The filter narrows the summary as it narrows the list; a filter matching nothing sums to zero.
        failed_only = (await call(client, "list_effects", run_id="r", status=["failed", "succeeded"], limit=1))[
            "summary"
        ]
        assert failed_only["count"] == 4 and failed_only["cost_usd"] == pytest.approx(0.75)
        everything = (await call(client, "list_effects", limit=1))["summary"]
        assert everything["count"] == 151 and everything["by_status"]["succeeded"] == 4
        nothing = (await call(client, "list_effects", run_id="none-such"))["summary"]
        assert nothing == {
            "count": 0,
            "by_status": {},
            "cost_usd": 0.0,
            "tokens": {"input_tokens": 0, "output_tokens": 0},
        }
