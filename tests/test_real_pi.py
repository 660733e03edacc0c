"""The real pi coding agent (npm) under effectd, against the scripted server (Anthropic Messages), offline.

Every run goes through ``dispatch_effect(harness="pi")`` with the built-in profile and no extra
flags; the server is reached through the effect's ``env``: ``PI_CODING_AGENT_DIR`` holding a
``models.json`` provider at the server and a ``settings.json`` that makes it the default.
"""

from __future__ import annotations

import re

import pytest

from tests.helpers.mcp import call
from tests.model_server import Conversation, Error, Script, Text, ToolCall
from tests.model_server.clis import pi_env
from tests.model_server.harness_runs import cli_fixtures, run_with_progress, sleeping, tree_gone
from tests.model_server.processes import finished

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(300)]

TIMEOUT_S = 30.0
ANSWER = "The command printed hi, so the shell works."

SCRIPT = Script(
    [
        Conversation(
            "TASK-ECHO",
            [ToolCall("bash", {"command": "echo hi"}, text="I will run echo first."), Text(ANSWER, delay_s=0.3)],
        ),
        Conversation("TASK-BROKEN", [Error(400, "scripted: this model is switched off")]),
        Conversation("TASK-SLEEP", [ToolCall("bash", {"command": "echo waiting; sleep 30"}), Text("slept")]),
        Conversation("TASK-LONG", [ToolCall("bash", {"command": "echo waiting; sleep 300"})]),
    ]
)


pi, on_path, model, env = cli_fixtures("pi", SCRIPT, pi_env, "pi-agent")


async def test_a_real_pi_run_streams_progress_and_reports_its_result(client, model, env, tmp_path):
    effect_id, messages = await run_with_progress(
        client,
        {"harness": "pi", "prompt": "TASK-ECHO: check the shell", "env": env, "cwd": str(tmp_path), "wait_s": 55},
    )
    record = await finished(client, effect_id)
    assert record["status"] == "succeeded", (record["error"], record["output_tail"][-1000:])
    assert record["command"] == ["pi", "--mode", "json", "-p", "TASK-ECHO: check the shell"]
    outcome = record["result"]
    assert outcome["answer"] == ANSWER and outcome["is_error"] is False and outcome["turns"] == 2
    # The cost comes from the per-million prices in models.json: 2 x (120 x 3 + 30 x 15) / 1e6.
    assert outcome["cost_usd"] == pytest.approx(0.00162)
    assert outcome["usage"]["input_tokens"] == 240 and outcome["usage"]["output_tokens"] == 60
    assert re.fullmatch(r"[0-9a-f-]{36}", outcome["session_id"])
    assert record["progress"]["tool_calls"] == 1 and record["progress"]["last_text"] == ANSWER
    assert any("I will run echo first." in m for m in messages), messages
    sent = model.recorded("/v1/messages", match="TASK-ECHO")
    assert [r.turn_index for r in sent] == [0, 1] and all(r.body["stream"] is True for r in sent)
    assert "hi" in str(sent[1].body["messages"][-1]["content"])


async def test_a_scripted_api_error_fails_the_effect_with_pis_own_message(client, model, env, tmp_path):
    record = await call(client, "dispatch_effect", harness="pi", prompt="TASK-BROKEN: x", env=env, cwd=str(tmp_path))
    record = await finished(client, record["effect_id"])
    assert record["status"] == "failed", record
    assert "scripted: this model is switched off" in record["error"], record["error"]
    print("pi's error:", record["error"], "exit", record["exit_code"])


async def test_cancelling_a_real_pi_run_leaves_neither_the_cli_nor_its_tool_alive(client, model, env, tmp_path):
    record, tree = await sleeping(client, "pi", "TASK-SLEEP: wait", "sleep 30", env=env, cwd=str(tmp_path))
    cancelled = await call(client, "cancel_effect", effect_id=record["effect_id"], grace_s=3)
    assert cancelled["status"] == "cancelled" and cancelled["cancel_reason"] == "user"
    tree_gone(record["effect_id"], tree)


async def test_a_real_pi_run_past_its_timeout_is_cancelled_with_its_tree(client, model, env, tmp_path):
    record, tree = await sleeping(
        client, "pi", "TASK-LONG: wait", "sleep 300", env=env, cwd=str(tmp_path), timeout_s=TIMEOUT_S, grace_s=3
    )
    record = await finished(client, record["effect_id"])
    assert record["status"] == "cancelled" and record["cancel_reason"] == "timeout", record
    tree_gone(record["effect_id"], tree)
