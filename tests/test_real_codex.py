"""The real Codex CLI (from npm) under effectd, against the scripted model server (Responses API), offline.

Every run goes through ``dispatch_effect(harness="codex")`` with the built-in profile and no extra
flags; the server is reached through the effect's ``env``: ``CODEX_HOME`` holding a ``config.toml``
that names it as the model provider, and ``OPENAI_API_KEY``.
"""

from __future__ import annotations

import re

import pytest

from tests.helpers.mcp import call, wait_until
from tests.helpers.processes import pid_alive
from tests.model_server import Conversation, Error, Script, Text, ToolCall
from tests.model_server.clis import PACKAGES, codex_env
from tests.model_server.harness_runs import cli_fixtures, run_with_progress, sleeping
from tests.model_server.processes import effect_tree, finished

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(300)]

TIMEOUT_S = 45.0


def shell(cmd: str) -> dict[str, object]:
    """Codex's `exec_command` tool call; it waits up to a minute for the command before yielding."""
    return {"cmd": cmd, "yield_time_ms": 60_000}


SCRIPT = Script(
    [
        Conversation(
            "TASK-ECHO",
            [
                ToolCall("exec_command", shell("echo hi"), text="I will run echo first."),
                Text("The command printed hi, so the shell works.", delay_s=0.3),
            ],
        ),
        Conversation("TASK-BROKEN", [Error(400, "scripted: this model is switched off")]),
        Conversation("TASK-SLEEP", [ToolCall("exec_command", shell("echo waiting; sleep 30")), Text("slept")]),
        Conversation("TASK-LONG", [ToolCall("exec_command", shell("echo waiting; sleep 300"))]),
    ]
)


codex, on_path, model, env = cli_fixtures("codex", SCRIPT, codex_env, "codex-home")


async def test_a_real_codex_run_streams_progress_and_reports_its_result(client, model, env, tmp_path):
    effect_id, messages = await run_with_progress(
        client,
        {"harness": "codex", "prompt": "TASK-ECHO: check the shell", "env": env, "cwd": str(tmp_path), "wait_s": 55},
    )
    record = await finished(client, effect_id)
    assert record["status"] == "succeeded", (record["error"], record["output_tail"])
    assert record["command"] == ["codex", "exec", "--json", "--skip-git-repo-check", "--", "TASK-ECHO: check the shell"]
    answer = "The command printed hi, so the shell works."
    outcome = record["result"]
    assert outcome["answer"] == answer and outcome["is_error"] is False and outcome["cost_usd"] is None
    assert outcome["usage"]["input_tokens"] == 240 and outcome["usage"]["output_tokens"] == 60
    assert outcome["turns"] == 1 and re.fullmatch(r"[0-9a-f-]{36}", outcome["session_id"])
    assert record["progress"]["tool_calls"] == 1 and record["progress"]["last_text"] == answer
    assert any("I will run echo first." in m for m in messages), messages
    sent = model.recorded("/v1/responses", match="TASK-ECHO")
    assert [r.turn_index for r in sent] == [0, 1] and all(r.body["stream"] is True for r in sent)
    outputs = [item for item in sent[1].body["input"] if item.get("type") == "function_call_output"]
    assert len(outputs) == 1 and "hi" in str(outputs[0]["output"])


async def test_a_scripted_api_error_fails_the_effect_with_codexs_own_message(client, model, env, tmp_path):
    record = await call(
        client, "dispatch_effect", harness="codex", prompt="TASK-BROKEN: anything", env=env, cwd=str(tmp_path)
    )
    record = await finished(client, record["effect_id"])
    assert record["status"] == "failed", record
    assert "scripted: this model is switched off" in record["error"], record["error"]
    assert record["result"]["is_error"] is True and record["exit_code"] == 1
    print("codex's error:", record["error"])


async def gone(effect_id: str, tree: dict[int, str], needle: str) -> None:
    """The CLI, its sandbox and the tool are dead when the cancel returns; nothing of the effect is left soon after.

    Codex also runs a shell-snapshot `bash -lc` in a session of its own (it reads the user's .bashrc).
    effectd's signals reach only the CLI's process group and codex does not end the snapshot on
    SIGTERM, so it can outlive the cancel by its own short life (seen here: under 2 s).
    """
    core = [pid for pid, cmd in tree.items() if "codex" in cmd.split(" ", 1)[0] or "bwrap" in cmd or cmd == needle]
    assert len(core) >= 3 and [pid for pid in core if pid_alive(pid)] == []
    await wait_until(lambda: effect_tree(effect_id) == {}, within_s=10)


async def test_cancelling_a_real_codex_run_leaves_neither_the_cli_nor_its_tool_alive(client, model, env, tmp_path):
    record, tree = await sleeping(client, "codex", "TASK-SLEEP: wait", "sleep 30", env=env, cwd=str(tmp_path))
    cancelled = await call(client, "cancel_effect", effect_id=record["effect_id"], grace_s=3)
    assert cancelled["status"] == "cancelled" and cancelled["cancel_reason"] == "user"
    await gone(record["effect_id"], tree, "sleep 30")


async def test_a_real_codex_run_past_its_timeout_is_cancelled_with_its_tree(client, model, env, tmp_path):
    record, tree = await sleeping(
        client, "codex", "TASK-LONG: wait", "sleep 300", env=env, cwd=str(tmp_path), timeout_s=TIMEOUT_S, grace_s=3
    )
    record = await finished(client, record["effect_id"])
    assert record["status"] == "cancelled" and record["cancel_reason"] == "timeout", record
    await gone(record["effect_id"], tree, "sleep 300")


def test_the_version_run_is_the_pinned_one(codex):
    import subprocess

    out = subprocess.run([str(codex), "--version"], capture_output=True, text=True, timeout=60).stdout
    assert out.strip() == f"codex-cli {PACKAGES['codex'][1]}"
