"""Approvals (issue 25) with the real Claude Code, offline: a `harness: "claude"` sub-agent dispatched with
`approvals: "ask"` asks effectd before its Write, through `--permission-prompt-tool mcp__effectd__approve`
and the gate effectd starts for it, and does what the answer says.

Each test talks to `effectd serve` through a real MCP client over stdio; the sub-agent is the pinned Claude
Code (tests/model_server/clis.py), whose model is the scripted server: it calls Write, then answers. What the
model got back for the Write (the tool_result) is read from the requests the server recorded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from tests.helpers.approvals import pending_approval
from tests.helpers.mcp import call
from tests.helpers.processes import effectd_bin, pid_alive, stdio_params
from tests.model_server import ModelServer, Script
from tests.model_server.approving import FINAL_ANSWER, GROUP, PROMPT, TOOLS, WROTE, approving_script, writer
from tests.model_server.clis import claude_env, require
from tests.model_server.harness_runs import STARTUP_S
from tests.model_server.interactive import run_interactive_mission
from tests.model_server.mission import run_mission
from tests.model_server.processes import effect_tree, finished

pytestmark = [pytest.mark.anyio, pytest.mark.real, pytest.mark.timeout(300)]

DENIAL = "not in this repository: write under build/ instead"


@pytest.fixture
def claude() -> Path:
    return require("claude")


def serve(tmp_path: Path, claude: Path) -> StdioServerParameters:
    """`effectd serve` on a fresh journal, with the pinned `claude` first on its PATH (as after `npm i -g`)."""
    return stdio_params(tmp_path / "journal.db", env={"PATH": f"{claude.parent}{os.pathsep}{os.environ['PATH']}"})


def write_result(model: ModelServer, match: str) -> dict[str, Any]:
    """The tool_result the sub-agent sent its model for the Write (in the request for turn 1)."""
    (request,) = [r for r in model.recorded("/v1/messages", match=match) if r.turn_index == 1][:1]
    blocks = [
        block
        for message in request.body["messages"]
        if isinstance(message["content"], list)
        for block in message["content"]
        if block.get("type") == "tool_result"
    ]
    assert len(blocks) == 1, blocks
    return blocks[0]  # type: ignore[no-any-return]


def dispatch(model: ModelServer, tmp_path: Path, prompt: str, **options: Any) -> dict[str, Any]:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return {
        "harness": "claude",
        "prompt": prompt,
        "approvals": "ask",
        "env": claude_env(model, tmp_path / "claude-config"),
        "cwd": str(work),
        "background": True,
        **options,
    }


async def test_a_denied_write_is_not_done_and_the_deny_message_reaches_the_model(tmp_path: Path, claude: Path) -> None:
    target = tmp_path / "work" / "out.txt"
    with ModelServer(Script([writer("APR-DENY", target, "hello")])) as model:
        async with Client(serve(tmp_path, claude), read_timeout_seconds=70) as client:
            started = await call(client, "dispatch_effect", **dispatch(model, tmp_path, "APR-DENY: write out.txt"))
            approval = await pending_approval(client, started["effect_id"], within_s=STARTUP_S)
            waiting = await call(client, "poll_effect", effect_id=started["effect_id"])
            await call(client, "answer_approval", approval_id=approval["approval_id"], decision="deny", message=DENIAL)
            record = await finished(client, started["effect_id"])
    # The built-in profile's argv asks (no permission skipping), through effectd's gate.
    assert record["command"][:7] == ["claude", "-p", "APR-DENY: write out.txt", "--output-format", "stream-json",
                                     "--verbose", "--permission-prompt-tool"]  # fmt: skip
    assert record["command"][7:9] == ["mcp__effectd__approve", "--mcp-config"]
    assert not any("dangerously" in part or "bypassPermissions" in part for part in record["command"])
    assert approval["tool"] == "Write" and approval["input"] == {"file_path": str(target), "content": "hello"}
    assert waiting["status"] == "running" and waiting["waiting_for"] == "approval"
    assert record["status"] == "succeeded", (record["error"], record["output_tail"][-2000:])
    assert not target.exists()
    result = write_result(model, "APR-DENY")
    assert result["is_error"] is True and DENIAL in str(result["content"])


async def test_an_allowed_write_is_done(tmp_path: Path, claude: Path) -> None:
    target = tmp_path / "work" / "out.txt"
    with ModelServer(Script([writer("APR-ALLOW", target, "hello from claude")])) as model:
        async with Client(serve(tmp_path, claude), read_timeout_seconds=70) as client:
            started = await call(client, "dispatch_effect", **dispatch(model, tmp_path, "APR-ALLOW: write out.txt"))
            approval = await pending_approval(client, started["effect_id"], within_s=STARTUP_S)
            await call(client, "answer_approval", approval_id=approval["approval_id"], decision="allow")
            record = await finished(client, started["effect_id"])
            listed = (await call(client, "list_approvals", effect_id=started["effect_id"]))["approvals"]
    assert record["status"] == "succeeded", (record["error"], record["output_tail"][-2000:])
    assert target.read_text() == "hello from claude"
    assert record["result"]["answer"] == WROTE and record["waiting_for"] is None
    assert [(a["status"], a["decided_by"]) for a in listed] == [("allowed", "client")]
    assert write_result(model, "APR-ALLOW").get("is_error") is not True


async def test_an_approval_rule_allows_the_write_without_asking_anyone(tmp_path: Path, claude: Path) -> None:
    target = tmp_path / "work" / "notes.md"
    rules = [{"tool": "Write", "input_matches": r"notes\.md", "decision": "allow"}]
    with ModelServer(Script([writer("APR-RULE", target, "by the rule")])) as model:
        async with Client(serve(tmp_path, claude), read_timeout_seconds=70) as client:
            started = await call(
                client, "dispatch_effect",
                **dispatch(model, tmp_path, "APR-RULE: write notes.md", approval_rules=rules, group="ruled"),
            )  # fmt: skip
            # An orchestrator waiting on the group is never woken for an approval: nothing was left to ask.
            with anyio.fail_after(STARTUP_S * 2):
                while not (woke := await call(client, "await_group", group="ruled", timeout_s=55))["complete"]:
                    assert not woke["approvals"], woke
            assert not woke["approvals"], woke
            record = await call(client, "poll_effect", effect_id=started["effect_id"])
            listed = (await call(client, "list_approvals", effect_id=started["effect_id"]))["approvals"]
    assert record["status"] == "succeeded", (record["error"], record["output_tail"][-2000:])
    assert target.read_text() == "by the rule"
    # Claude Code did ask (the gate got the Write), and the rule answered it at once.
    assert [(a["tool"], a["status"], a["decided_by"]) for a in listed] == [("Write", "allowed", "rule")]
    assert write_result(model, "APR-RULE").get("is_error") is not True


async def test_an_unanswered_write_is_denied_at_the_approval_timeout(tmp_path: Path, claude: Path) -> None:
    target = tmp_path / "work" / "out.txt"
    with ModelServer(Script([writer("APR-LATE", target, "too late")])) as model:
        async with Client(serve(tmp_path, claude), read_timeout_seconds=70) as client:
            started = await call(
                client, "dispatch_effect", **dispatch(model, tmp_path, "APR-LATE: write out.txt", approval_timeout_s=2)
            )
            record = await finished(client, started["effect_id"])
            listed = (await call(client, "list_approvals", effect_id=started["effect_id"]))["approvals"]
    assert record["status"] == "succeeded", (record["error"], record["output_tail"][-2000:])
    assert not target.exists()
    assert [(a["status"], a["decided_by"]) for a in listed] == [("timed_out", "timeout")]
    result = write_result(model, "APR-LATE")
    assert result["is_error"] is True and "no answer within approval_timeout_s (2 s)" in str(result["content"])


async def orchestrated(
    calls: list[tuple[str, dict[str, Any]]], errors: list[Any], model: ModelServer, journal: Path, seen: str
) -> None:
    """What an orchestrating Claude Code did with approving_script: its four calls, none failed; its model read
    the sub-agent's Write from the first await_group; the journal (read back through a new server) holds one
    approval, allowed by the client with the id it read, and the sub-agent succeeded and left nothing."""
    assert [name for name, _ in calls] == ["dispatch_effect", "await_group", "answer_approval", "await_group"], seen
    assert errors == [], "a tool call of the orchestrator failed"
    (woke,) = [r for r in model.recorded(match="APR-ORCH") if r.turn_index == 2][:1]
    assert '\\"tool\\":\\"Write\\"' in json.dumps(woke.body["messages"][-1]), woke.body["messages"][-1]
    async with Client(stdio_params(journal), read_timeout_seconds=70) as client:
        listed = (await call(client, "list_approvals", group=GROUP))["approvals"]
        (record,) = (await call(client, "list_effects", group=GROUP))["effects"]
    assert [(a["tool"], a["status"], a["decided_by"]) for a in listed] == [("Write", "allowed", "client")]
    assert calls[2][1]["approval_id"] == listed[0]["approval_id"]
    assert record["status"] == "succeeded" and record["approvals"] == "ask", record
    assert record["result"]["answer"] == WROTE
    assert not pid_alive(record["pid"]) and effect_tree(record["effect_id"]) == {}


async def test_claude_as_the_orchestrator_allows_its_sub_agents_write_from_await_group(
    tmp_path: Path, claude: Path
) -> None:
    target = tmp_path / "mission" / "work" / "report.txt"
    target.parent.mkdir(parents=True)
    run = await anyio.to_thread.run_sync(
        lambda: run_mission(
            tmp_path / "mission",
            claude,
            effectd_bin(),
            prompt=PROMPT,
            tools=TOOLS,
            script=approving_script(target, "allowed by the orchestrator"),
        )
    )
    assert run.exit_code == 0, run.stderr[-2000:]
    assert run.answer == FINAL_ANSWER
    await orchestrated(run.tool_calls(), run.tool_errors(), run.server, run.journal, "")
    assert target.read_text() == "allowed by the orchestrator"


async def test_an_interactive_claude_orchestrator_allows_its_sub_agents_write_from_await_group(
    tmp_path: Path, claude: Path
) -> None:
    """The same orchestration in an interactive Claude Code session (in a pseudo-terminal), as a user runs it:
    the scripted orchestrating model reads the sub-agent's request from await_group and answers it."""
    target = tmp_path / "mission" / "work" / "report.txt"
    target.parent.mkdir(parents=True)
    run = await anyio.to_thread.run_sync(
        lambda: run_interactive_mission(
            tmp_path / "mission",
            claude,
            effectd_bin(),
            extra_env={},
            prompt=PROMPT,
            tools=TOOLS,
            script=approving_script(target, "allowed interactively"),
            last_turn=("APR-ORCH", 4),
        )
    )
    await orchestrated(run.tool_calls(), run.tool_errors(), run.server, run.journal, run.screen[-3000:])
    assert target.read_text() == "allowed interactively"


async def test_a_flow_step_with_approval_true_starts_its_real_claude_only_once_allowed(
    tmp_path: Path, claude: Path
) -> None:
    target = tmp_path / "work" / "flow.txt"
    with ModelServer(Script([writer("APR-FLOW", target, "after the start was allowed")])) as model:
        step = dispatch(
            model, tmp_path, "APR-FLOW: write flow.txt", approval_rules=[{"tool": "Write", "decision": "allow"}]
        )
        del step["background"]
        async with Client(serve(tmp_path, claude), read_timeout_seconds=70) as client:
            flow = await call(
                client, "dispatch_flow", steps=[{"id": "write", "approval": True, **step}], background=True
            )
            with anyio.fail_after(60):
                woke = await call(client, "await_group", group=flow["flow_id"], timeout_s=55)
            assert woke["approvals"], woke
            (start,) = woke["approvals"]
            waiting = await call(client, "poll_effect", effect_id=start["effect_id"])
            asked_model = model.recorded(match="APR-FLOW")
            await call(client, "answer_approval", approval_id=start["approval_id"], decision="allow")
            record = await finished(client, start["effect_id"])
            done = await call(client, "poll_flow", flow_id=flow["flow_id"], wait_s=30)
            listed = (await call(client, "list_approvals", group=flow["flow_id"]))["approvals"]
    # Before the answer: the step waited to start (a rule for Write does not allow a start), its Claude
    # Code not even launched.
    assert start["tool"] == "start" and start["input"]["step_id"] == "write"
    assert waiting["status"] == "pending" and waiting["waiting_for"] == "approval" and waiting["started_at"] is None
    assert asked_model == []
    # After it: the real Claude Code ran the step, and its own Write was allowed by the rule.
    assert record["status"] == "succeeded", (record["error"], record["output_tail"][-2000:])
    assert done["status"] == "succeeded" and record["result"]["answer"] == WROTE
    assert target.read_text() == "after the start was allowed"
    assert [(a["tool"], a["status"], a["decided_by"]) for a in listed] == [
        ("start", "allowed", "client"),
        ("Write", "allowed", "rule"),
    ]
