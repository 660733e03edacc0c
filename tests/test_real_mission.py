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

import pytest

from tests.conftest import REPO, effectd_bin, pid_alive
from tests.model_server.clis import require
from tests.model_server.mission import FINAL_ANSWER, GROUP, MCP, run_mission
from tests.model_server.processes import effect_tree

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_claude_as_the_client_runs_three_sub_agents_awaits_one_and_cancels_the_slow_one(tmp_path):
    claude = require("claude")
    run = run_mission(tmp_path / "mission", claude, effectd_bin())
    assert run.exit_code == 0, run.stderr[-2000:]

    # The orchestrator saw effectd connected and called its tools, in the scripted order.
    init = run.events[0]
    assert {"name": "effectd", "status": "connected"}.items() <= init["mcp_servers"][0].items()
    calls = [
        block["name"].removeprefix(MCP)
        for event in run.events
        if event.get("type") == "assistant"
        for block in event["message"]["content"]
        if block.get("type") == "tool_use"
    ]
    assert calls == ["dispatch_effect"] * 3 + ["await_group", "cancel_effect"]
    errors = [
        block
        for event in run.events
        if event.get("type") == "user"
        for block in event["message"]["content"]
        if isinstance(block, dict) and block.get("is_error")
    ]
    assert errors == [], "a tool call failed (MCP server still connecting?)"
    assert run.answer == FINAL_ANSWER

    # The journal, read with effectd's own command line.
    listed = subprocess.run(
        [effectd_bin(), "ls", "--db", str(run.journal), "--group", GROUP, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    records = {record["label"]: record for record in json.loads(listed.stdout)}
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
