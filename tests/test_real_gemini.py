"""The real Gemini CLI (npm) under effectd, against the scripted server (Gemini API over SSE), offline.

Every run goes through ``dispatch_effect(harness="gemini")`` with the built-in profile; the only
per-call flag is ``--approval-mode yolo``, which a user passes too: a headless run does not even
offer the model its shell tool without it. The server is reached through the effect's ``env``
(``GOOGLE_GEMINI_BASE_URL`` and ``GEMINI_CLI_HOME`` holding a ``settings.json``, see ``gemini_env``).
"""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from tests.helpers.mcp import call
from tests.model_server import Conversation, Error, Script, Text, ToolCall
from tests.model_server.clis import PACKAGES, gemini_env
from tests.model_server.harness_runs import cli_fixtures, run_with_progress, sleeping, tree_gone
from tests.model_server.processes import finished

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(300)]

YOLO = ["--approval-mode", "yolo"]
TIMEOUT_S = 30.0
ANSWER = "The command printed hi, so the shell works."
PATH = "/v1beta/models/scripted-model:streamGenerateContent"

SCRIPT = Script(
    [
        Conversation(
            "TASK-ECHO",
            [ToolCall("run_shell_command", {"command": "echo hi"}, text="I will run echo first."), Text(ANSWER, 0.3)],
        ),
        # 400 fails at once; Gemini CLI retries 429 and 5xx with backoff.
        Conversation("TASK-BROKEN", [Error(400, "scripted: this model is switched off")]),
        Conversation("TASK-SLEEP", [ToolCall("run_shell_command", {"command": "echo waiting; sleep 30"}), Text("ok")]),
        Conversation("TASK-LONG", [ToolCall("run_shell_command", {"command": "echo waiting; sleep 300"})]),
    ]
)


gemini, on_path, model, env = cli_fixtures("gemini", SCRIPT, gemini_env, "gemini-home")


async def test_a_real_gemini_run_streams_progress_and_reports_its_result(client, model, env, tmp_path):
    effect_id, messages = await run_with_progress(
        client,
        {
            "harness": "gemini",
            "prompt": "TASK-ECHO: check the shell",
            "args": YOLO,
            "env": env,
            "cwd": str(tmp_path),
            "wait_s": 55,
        },
    )
    record = await finished(client, effect_id)
    assert record["status"] == "succeeded", (record["error"], record["output_tail"][-1000:])
    assert record["command"] == ["gemini", "-p", "TASK-ECHO: check the shell", "-o", "stream-json", *YOLO]
    outcome = record["result"]
    # The answer is the last turn's text, as in the CLI's own `-o json` response.
    assert outcome["answer"] == ANSWER and outcome["is_error"] is False and outcome["cost_usd"] is None
    assert outcome["usage"]["input_tokens"] == 240 and outcome["usage"]["output_tokens"] == 60
    assert outcome["usage"]["total_tokens"] == 300 and outcome["turns"] == 2
    assert re.fullmatch(r"[0-9a-f-]{36}", outcome["session_id"])
    assert record["progress"]["tool_calls"] == 1 and record["progress"]["last_text"] == ANSWER
    assert any("I will run echo first." in m for m in messages), messages
    sent = model.recorded(PATH, match="TASK-ECHO")
    assert [r.turn_index for r in sent] == [0, 1] and all(r.query == "alt=sse" for r in sent)
    assert sent[0].headers["x-goog-api-key"] == "scripted-key"
    responses = [p["functionResponse"] for p in sent[1].body["contents"][-1]["parts"] if "functionResponse" in p]
    assert len(responses) == 1 and "hi" in str(responses[0]["response"])
    # Nothing but the model calls reached the server (no router classifier, no countTokens).
    assert {r.path for r in model.recorded()} == {PATH}


async def test_a_scripted_api_error_fails_the_effect_with_geminis_own_message(client, model, env, tmp_path):
    record = await call(
        client, "dispatch_effect", harness="gemini", prompt="TASK-BROKEN: x", args=YOLO, env=env, cwd=str(tmp_path)
    )
    record = await finished(client, record["effect_id"])
    assert record["status"] == "failed", record
    assert "scripted: this model is switched off" in record["error"], record["error"]
    assert record["result"]["is_error"] is True and record["exit_code"] != 0
    assert model.turns_served("TASK-BROKEN") == [0], "a 400 is not retried"
    print("gemini's error:", record["error"], "exit", record["exit_code"])


async def test_cancelling_a_real_gemini_run_leaves_neither_the_cli_nor_its_tool_alive(client, model, env, tmp_path):
    record, tree = await sleeping(
        client, "gemini", "TASK-SLEEP: wait", "sleep 30", args=YOLO, env=env, cwd=str(tmp_path)
    )
    assert record["progress"]["tool_calls"] == 1
    # The CLI relaunches itself (a second node with a larger heap); its shell tool runs in a session of
    # its own and outlives a SIGTERM of the CLI's group: effectd's containment is what ends it.
    assert sum(1 for cmd in tree.values() if "gemini -p TASK-SLEEP" in cmd) == 2
    assert os.getsid(next(pid for pid, cmd in tree.items() if cmd == "sleep 30")) != os.getsid(record["pid"])
    started = time.monotonic()
    cancelled = await call(client, "cancel_effect", effect_id=record["effect_id"], grace_s=3)
    assert cancelled["status"] == "cancelled" and cancelled["cancel_reason"] == "user"
    assert time.monotonic() - started < 25
    tree_gone(record["effect_id"], tree)


async def test_a_real_gemini_run_past_its_timeout_is_cancelled_with_its_tree(client, model, env, tmp_path):
    record, tree = await sleeping(
        client,
        "gemini",
        "TASK-LONG: wait",
        "sleep 300",
        args=YOLO,
        env=env,
        cwd=str(tmp_path),
        timeout_s=TIMEOUT_S,
        grace_s=3,
    )
    record = await finished(client, record["effect_id"])
    assert record["status"] == "cancelled" and record["cancel_reason"] == "timeout", record
    tree_gone(record["effect_id"], tree)


def test_the_version_run_is_the_pinned_one(gemini):
    out = subprocess.run([str(gemini), "--version"], capture_output=True, text=True, timeout=60).stdout
    assert out.strip() == PACKAGES["gemini"][1]
