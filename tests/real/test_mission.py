"""The whole mission, offline, with the real Claude Code as effectd's MCP client (tests/model_server/mission.py).

`claude -p --mcp-config` starts `effectd serve` on a fresh journal; the scripted model makes it
dispatch three background `harness: claude` sub-agents (the real CLI again), await the group in
mode `any`, cancel the slow one, and answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.paths import REPO
from tests.helpers.processes import effectd_bin, pid_alive
from tests.model_server.clis import require
from tests.model_server.interactive import run_interactive_mission
from tests.model_server.mission import FINAL_ANSWER, GROUP, run_mission
from tests.model_server.processes import effect_tree
from tests.model_server.wire import read_wire

pytestmark = [pytest.mark.real, pytest.mark.timeout(900)]


def test_claude_as_the_client_runs_three_sub_agents_awaits_one_and_cancels_the_slow_one(tmp_path):
    claude = require("claude")
    run = run_mission(tmp_path / "mission", claude, effectd_bin())
    assert run.exit_code == 0, run.stderr[-2000:]

    # The orchestrator saw effectd connected and called its tools, in the scripted order.
    init = run.events[0]
    assert {"name": "effectd", "status": "connected"}.items() <= init["mcp_servers"][0].items()
    calls = [name for name, _ in run.tool_calls()]
    assert calls == ["dispatch_effect"] * 3 + ["await_group", "cancel_effect"]
    assert run.tool_errors() == [], "a tool call failed (MCP server still connecting?)"
    assert run.answer == FINAL_ANSWER

    # The journal, read with effectd's own command line.
    records = sub_agents(run.journal)
    assert sorted(records) == ["fast-1", "fast-2", "slow"]
    assert all(r["kind"] == "harness" and r["harness"] == "claude" for r in records.values())
    assert records["fast-1"]["status"] == "succeeded"
    assert records["fast-1"]["result"]["answer"] == "fast-1: the summary is short."
    slow = records["slow"]
    assert slow["status"] == "cancelled" and slow["cancel_reason"] == "user"
    # It was cancelled while its Bash tool ran `sleep 300`, and nothing of it is left.
    assert slow["progress"]["tool_calls"] == 1 and run.server.turns_served("SUB-SLOW") == [0]
    assert not pid_alive(slow["pid"]) and effect_tree(slow["effect_id"]) == {}
    # fast-2 ran its own tool call for real (it is done or still finishing when the mission ends).
    assert run.server.turns_served("SUB-FAST-2")[:1] == [0]
    # The await_group result the orchestrator read named a finished sub-agent first.
    awaited = [r for r in run.server.recorded(match="MISSION") if r.turn_index == 4][0]
    assert '\\"status\\":\\"succeeded\\"' in json.dumps(awaited.body["messages"][-1])


def test_the_client_example_runs_the_mission_for_anyone_to_watch(tmp_path):
    require("claude")
    example = REPO / "client_examples" / "real_claude_offline.py"
    done = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "MCP servers: effectd (connected)" in done.stdout
    assert "calls cancel_effect" in done.stdout and f"its answer: {FINAL_ANSWER}" in done.stdout
    lines = {line.split()[0]: line for line in done.stdout.splitlines()[-3:]}
    assert "cancelled  reason=user" in lines["slow"] and "succeeded" in lines["fast-1"]


def test_the_client_example_says_so_when_claude_is_not_installed(tmp_path):
    example = REPO / "client_examples" / "real_claude_offline.py"
    env = {**os.environ, "EFFECTD_NODE_PREFIX": str(tmp_path / "no-node"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0 and "claude is not installed" in done.stdout


# Claude Code's MCP tasks path (SEP-2663), seen on the wire between Claude Code and effectd.
TASKS_EXTENSION = "io.modelcontextprotocol/tasks"


def sub_agents(journal: Path) -> dict[str, dict[str, Any]]:
    """The mission's sub-agents by label, read with effectd's own command line (`effectd ls --json`)."""
    listed = subprocess.run(
        [effectd_bin(), "ls", "--db", str(journal), "--group", GROUP, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return {record["label"]: record for record in json.loads(listed.stdout)}


def _requests(wire: list[dict], method: str) -> list[dict]:
    return [entry["msg"] for entry in wire if entry["dir"] == "c2s" and entry["msg"].get("method") == method]


def _answers(wire: list[dict]) -> dict:
    return {entry["msg"]["id"]: entry["msg"] for entry in wire if entry["dir"] == "s2c" and "id" in entry["msg"]}


def _declares_tasks(request: dict) -> bool:
    capabilities = request["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"]
    return TASKS_EXTENSION in capabilities.get("extensions", {})


def test_claude_print_mode_declares_no_tasks_so_effectd_answers_every_call_inline(tmp_path):
    """`claude -p` (2.1.332) is a single-shot print session: its tools/call never declares the tasks
    extension, even with MCP_PROTOCOL_NEGOTIATION=auto and every task switch of its binary set, so effectd
    answers inline and no tasks/get is sent. The mission works all the same."""
    claude = require("claude")
    switches = {
        "MCP_PROTOCOL_NEGOTIATION": "auto",
        "CLAUDE_AUTO_BACKGROUND_TASKS": "1",
        "CLAUDE_CODE_MCP_AUTO_BACKGROUND_MS": "1",
    }
    run = run_mission(tmp_path / "mission", claude, effectd_bin(), extra_env=switches, wire=tmp_path / "wire.jsonl")
    assert run.exit_code == 0, run.stderr[-2000:]
    assert run.answer == FINAL_ANSWER
    wire = read_wire(tmp_path / "wire.jsonl")
    calls = _requests(wire, "tools/call")
    # 2026-07-28 was negotiated (effectd offers tasks in server/discover) ...
    assert calls and all(c["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] == "2026-07-28" for c in calls)
    discovered = [_answers(wire)[d["id"]] for d in _requests(wire, "server/discover")]
    assert all(TASKS_EXTENSION in a["result"]["capabilities"]["extensions"] for a in discovered)
    # ... but no call declares the extension, so every answer is an inline result, never a task.
    assert [c["params"]["name"] for c in calls][:3] == ["dispatch_effect"] * 3
    assert not any(_declares_tasks(c) for c in calls)
    assert all(_answers(wire)[c["id"]]["result"].get("resultType") != "task" for c in calls)
    assert _requests(wire, "tasks/get") == []


def test_interactive_claude_runs_foreground_dispatches_as_tasks_and_polls_tasks_get(tmp_path):
    """An interactive Claude Code 2.1.332 session (MCP_PROTOCOL_NEGOTIATION=auto) declares the tasks
    extension on its tools/call: effectd answers a foreground dispatch_effect with a task, and Claude Code
    polls tasks/get until the effect's record comes back completed."""
    claude = require("claude")
    run = run_interactive_mission(
        tmp_path / "mission", claude, effectd_bin(), extra_env={"MCP_PROTOCOL_NEGOTIATION": "auto"}
    )
    wire, answers = run.wire, _answers(run.wire)
    dispatches = [c for c in _requests(wire, "tools/call") if c["params"]["name"] == "dispatch_effect"]
    assert len(dispatches) == 3, run.screen[-2000:]
    assert all(_declares_tasks(c) and "background" not in c["params"]["arguments"] for c in dispatches)
    created = [answers[c["id"]]["result"] for c in dispatches if c["id"] in answers]
    assert created and all(r["resultType"] == "task" and r["status"] == "working" for r in created)
    task_ids = {r["taskId"] for r in created}
    polls = _requests(wire, "tasks/get")
    assert {p["params"]["taskId"] for p in polls} & task_ids
    settled = [answers[p["id"]]["result"] for p in polls if p["id"] in answers]
    fast_1 = [
        r for r in settled if r["status"] == "completed" and r["result"]["structuredContent"]["label"] == "fast-1"
    ]
    assert fast_1, "tasks/get never returned fast-1 completed"
    assert fast_1[0]["result"]["structuredContent"]["result"]["answer"] == "fast-1: the summary is short."
    # The tasks are effectd's effects: the journal has the three sub-agents, fast-1 succeeded.
    records = sub_agents(run.journal)
    assert sorted(records) == ["fast-1", "fast-2", "slow"]
    assert {r["effect_id"] for r in records.values()} >= task_ids
    assert records["fast-1"]["status"] == "succeeded"
