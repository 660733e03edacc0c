"""Sub-agents end to end over real stdio, with the fake harness configured as a profile in effectd.toml."""

from __future__ import annotations

import re
import sqlite3
import sys
import time

import anyio
import pytest
from mcp import Client

from tests.helpers.mcp import call, read_until
from tests.helpers.processes import pid_alive, stdio_params

pytestmark = pytest.mark.anyio


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "effectd.toml"
    path.write_text(
        f"""
result_grace_s = 0.5

[harness.fake]
command = [{sys.executable!r}, "-m", "effectd.harness.fake", "{{args}}", "{{prompt}}"]
parser = "claude"
env = {{ FAKE_HARNESS_DELAY = "0.1" }}
"""
    )
    return path


def server(tmp_path, config, *flags: str):
    return stdio_params(tmp_path / "j.db", "--config", str(config), *flags)


async def test_a_foreground_sub_agent_reports_progress_then_its_parsed_result(tmp_path, config):
    messages: list[tuple[float, str]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append((time.monotonic(), message or ""))

    async with Client(server(tmp_path, config), read_timeout_seconds=70) as client:
        result = await client.call_tool(
            "dispatch_effect",
            {"harness": "fake", "prompt": "summarise the repo", "args": ["--steps", "3", "--cost", "0.25"]},
            progress_callback=on_progress,
        )
        returned = time.monotonic()
    record = result.structured_content
    assert record["status"] == "succeeded" and record["kind"] == "harness" and record["harness"] == "fake"
    assert record["result"]["answer"] == "Done: summarise the repo"
    assert record["result"]["cost_usd"] == 0.25 and record["result"]["is_error"] is False
    assert record["result"]["turns"] == 3 and record["result"]["session_id"]
    assert record["progress"]["turns"] == 3 and record["progress"]["tool_calls"] >= 1
    assert messages and messages[0][0] < returned - 0.2, "no progress before the call returned"
    assert any("Step 1/3" in m for _, m in messages)
    with sqlite3.connect(tmp_path / "j.db") as conn:
        progress_events = conn.execute("select count(*) from events where type = 'EFFECT_PROGRESS'").fetchone()[0]
    assert progress_events >= 1


async def test_five_sub_agents_deliver_their_results_as_they_complete(tmp_path, config):
    async with Client(server(tmp_path, config), read_timeout_seconds=70) as client:
        ids = {}
        for steps in (5, 1, 4, 2, 3):
            record = await call(
                client,
                "dispatch_effect",
                harness="fake",
                prompt=f"task {steps}",
                args=["--steps", str(steps), "--cost", "0.1"],
                background=True,
                group="agents",
                run_id="agents-run",
            )
            ids[record["effect_id"]] = steps
        order, finished, batches, cursor = [], [], 0, 0
        with anyio.fail_after(40):
            while True:
                outcome = await call(client, "await_group", group="agents", mode="any", cursor=cursor, timeout_s=20)
                batches += bool(outcome["done"])
                for record in outcome["done"]:
                    assert record["status"] == "succeeded"
                    order.append(ids[record["effect_id"]])
                    finished.append(record["finished_at"])
                    assert record["result"]["answer"] == f"Done: task {ids[record['effect_id']]}"
                cursor = outcome["cursor"]
                if outcome["complete"]:
                    break
        listed = await call(client, "list_effects", run_id="agents-run")
    # In the order they really finished (which, on a loaded machine, need not be the order of their
    # step counts), taken a few at a time while the others still ran.
    assert sorted(order) == [1, 2, 3, 4, 5]
    assert finished == sorted(finished), f"results did not arrive as the sub-agents finished: {order} {finished}"
    assert batches >= 2, "every result came in one answer: none was taken while others still ran"
    assert listed["summary"]["cost_usd"] == pytest.approx(0.5)
    assert listed["summary"]["tokens"]["output_tokens"] > 0


async def test_cancelling_a_sub_agent_that_ignores_sigterm_kills_it_and_its_grandchild(tmp_path, config):
    async with Client(server(tmp_path, config), read_timeout_seconds=70) as client:
        record = await call(
            client,
            "dispatch_effect",
            harness="fake",
            prompt="never ends",
            args=["--steps", "1000", "--ignore-sigterm", "--grandchild"],
            background=True,
        )
        text = await read_until(client, record["effect_id"], "grandchild pid")
        grandchild = int(re.search(r"grandchild pid (\d+)", text).group(1))
        running = await call(client, "poll_effect", effect_id=record["effect_id"])
        cancelled = await call(client, "cancel_effect", effect_id=record["effect_id"], grace_s=0.3)
    assert cancelled["status"] == "cancelled" and cancelled["cancel_reason"] == "user"
    assert not pid_alive(running["pid"]) and not pid_alive(grandchild)


async def test_a_harness_that_reports_an_error_fails_even_when_it_exits_zero(tmp_path, config):
    async with Client(server(tmp_path, config), read_timeout_seconds=70) as client:
        failed = await call(
            client, "dispatch_effect", harness="fake", prompt="x", args=["--steps", "1", "--fail", "--exit-code", "0"]
        )
        cut = await call(client, "dispatch_effect", harness="fake", prompt="x", args=["--steps", "1", "--no-result"])
    assert failed["status"] == "failed" and failed["exit_code"] == 0 and failed["error"]
    assert failed["result"]["is_error"] is True
    assert cut["status"] == "failed" and "final result event" in cut["error"]


async def test_a_sub_agent_that_hangs_after_its_result_is_reaped_and_keeps_its_result(tmp_path, config):
    async with Client(server(tmp_path, config), read_timeout_seconds=70) as client:
        record = await call(
            client, "dispatch_effect", harness="fake", prompt="x", args=["--steps", "1", "--hang-after-result"]
        )
    assert record["status"] == "succeeded" and record["result"]["answer"] == "Done: x"
    assert record["duration_s"] < 5


async def test_a_sub_agent_with_garbage_lines_still_gives_its_result(tmp_path, config):
    async with Client(server(tmp_path, config), read_timeout_seconds=70) as client:
        record = await call(client, "dispatch_effect", harness="fake", prompt="x", args=["--steps", "1", "--garbage"])
    assert record["status"] == "succeeded" and record["result"]["answer"] == "Done: x"


async def test_list_harnesses_shows_the_configured_profile_as_available(tmp_path, config):
    async with Client(server(tmp_path, config), read_timeout_seconds=70) as client:
        listed = await call(client, "list_harnesses")
    profiles = {p["name"]: p for p in listed["harnesses"]}
    assert profiles["fake"]["available"] is True and profiles["fake"]["parser"] == "claude"
    assert profiles["claude"]["command"][:2] == ["claude", "-p"]
