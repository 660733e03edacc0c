"""The real Claude Code CLI (from npm) under effectd, against the scripted model server, offline.

Every run goes through ``dispatch_effect(harness="claude")`` with the built-in profile; the only
per-call flag is ``--allowedTools Bash``, which a user passes too (a headless run cannot answer a
permission prompt). The server is reached through the effect's ``env`` (``ANTHROPIC_BASE_URL``).
"""

from __future__ import annotations

import os
import re
import time

import pytest

from tests.helpers.mcp import call
from tests.model_server import Conversation, Error, Script, Text, ToolCall
from tests.model_server.clis import PACKAGES, claude_env
from tests.model_server.harness_runs import cli_fixtures, run_with_progress, sleeping, tree_gone
from tests.model_server.processes import finished

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(300)]

ALLOW_BASH = ["--allowedTools", "Bash"]
SLOW_COMMAND = "echo waiting; sleep 30; echo done"
TIMEOUT_S = 60.0
"""The timeout of the run that sleeps 300 s: long enough for the CLI to start and reach its tool call."""

SCRIPT = Script(
    [
        Conversation(
            "TASK-ECHO",
            [
                ToolCall("Bash", {"command": "echo hi", "description": "Print hi"}, text="I will run echo first."),
                Text("The command printed hi, so the shell works.", delay_s=0.3),
            ],
        ),
        Conversation("TASK-BROKEN", [Error(400, "scripted: this model is switched off")]),
        # Claude Code blocks a standalone `sleep 30` ("use run_in_background"), so the sleep is in a list.
        Conversation("TASK-SLEEP", [ToolCall("Bash", {"command": SLOW_COMMAND, "description": "Wait"}), Text("slept")]),
        Conversation("TASK-LONG", [ToolCall("Bash", {"command": "echo waiting; sleep 300", "description": "Wait"})]),
    ]
)


claude, on_path, model, env = cli_fixtures("claude", SCRIPT, claude_env, "claude-config")


async def test_a_real_claude_run_streams_progress_and_reports_its_result(client, model, env):
    effect_id, messages = await run_with_progress(
        client,
        {"harness": "claude", "prompt": "TASK-ECHO: check the shell", "args": ALLOW_BASH, "env": env, "wait_s": 55},
    )
    record = await finished(client, effect_id)  # on a very loaded machine it may outlast wait_s
    assert record["status"] == "succeeded", (record["error"], record["output_tail"])
    assert record["command"][:3] == ["claude", "-p", "TASK-ECHO: check the shell"]
    answer = "The command printed hi, so the shell works."
    outcome = record["result"]
    assert outcome["answer"] == answer and outcome["is_error"] is False and outcome["subtype"] == "success"
    assert outcome["cost_usd"] > 0 and outcome["usage"]["input_tokens"] == 240
    assert outcome["usage"]["output_tokens"] == 60 and outcome["turns"] == 2
    assert re.fullmatch(r"[0-9a-f-]{36}", outcome["session_id"])
    assert record["progress"]["tool_calls"] == 1 and record["progress"]["last_text"] == answer
    # Progress arrived while it ran: the first turn's text, before the answer.
    assert any("I will run echo first." in m for m in messages), messages
    # The CLI really ran the tool and sent its output back as the next turn's tool_result.
    sent = model.recorded("/v1/messages", match="TASK-ECHO")
    assert [r.turn_index for r in sent] == [0, 1] and all(r.query == "beta=true" for r in sent)
    assert all(r.body["stream"] is True for r in sent)
    tool_results = [
        block
        for m in sent[1].body["messages"]
        for block in m["content"]
        if isinstance(block, dict) and block.get("type") == "tool_result"
    ]
    assert len(tool_results) == 1 and "hi" in str(tool_results[0]["content"])


async def test_a_scripted_api_error_fails_the_effect_with_claudes_own_message(client, model, env):
    record = await call(client, "dispatch_effect", harness="claude", prompt="TASK-BROKEN: anything", env=env, wait_s=55)
    record = await finished(client, record["effect_id"])
    assert record["status"] == "failed", record
    assert "scripted: this model is switched off" in record["error"] and "400" in record["error"]
    assert record["result"]["is_error"] is True and record["exit_code"] == 1
    assert model.recorded("/v1/messages", match="TASK-BROKEN"), "the CLI never reached the scripted server"
    print("claude's error:", record["error"])


async def _sleeping(
    client, env, prompt="TASK-SLEEP: wait", needle="sleep 30", **options
) -> tuple[dict, dict[int, str]]:
    """Starts a run whose tool call sleeps 30 s; returns its record and its process tree once `sleep 30` runs.

    Claude Code starts its Bash tool in a session of its own: the tree is the CLI's process group
    plus that session, which only effectd's environment mark ties to the effect.
    """
    record, tree = await sleeping(client, "claude", prompt, needle, args=ALLOW_BASH, env=env, **options)
    assert os.getsid(next(pid for pid, cmd in tree.items() if cmd == needle)) != os.getsid(record["pid"])
    return record, tree


async def test_cancelling_a_real_claude_run_leaves_neither_the_cli_nor_its_tool_alive(client, model, env):
    record, tree = await _sleeping(client, env)
    assert record["progress"]["tool_calls"] == 1
    started = time.monotonic()
    cancelled = await call(client, "cancel_effect", effect_id=record["effect_id"], grace_s=3)
    assert cancelled["status"] == "cancelled" and cancelled["cancel_reason"] == "user"
    assert time.monotonic() - started < 25
    tree_gone(record["effect_id"], tree)


async def test_a_real_claude_run_past_its_timeout_is_cancelled_with_its_tree(client, model, env):
    record, tree = await _sleeping(client, env, "TASK-LONG: wait", "sleep 300", timeout_s=TIMEOUT_S, grace_s=3)
    record = await finished(client, record["effect_id"])
    assert record["status"] == "cancelled" and record["cancel_reason"] == "timeout", record
    tree_gone(record["effect_id"], tree)


def test_the_version_run_is_the_pinned_one(claude):
    import subprocess

    out = subprocess.run([str(claude), "--version"], capture_output=True, text=True, timeout=60).stdout
    assert out.startswith(PACKAGES["claude"][1])
