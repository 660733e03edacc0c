"""Approvals (issue 25) over MCP tasks, through real stdio: a task whose sub-agent (or flow step) waits
for an approval is `input_required`, its `inputRequests` one elicitation form per approval, and
`tasks/update` answers them; answered any other way, the task is `working` again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from tests.helpers.approvals import asker_params
from tests.helpers.mcp import call
from tests.helpers.tasks_client import TasksClient, TaskState, settle, start_task, tasks_update, until

pytestmark = pytest.mark.anyio


def inputs(state: TaskState) -> dict[str, Any]:
    return (state.model_extra or {})["inputRequests"]  # type: ignore[no-any-return]


def connect(tmp_path: Path) -> Client:
    return Client(asker_params(tmp_path), read_timeout_seconds=70, extensions=[TasksClient()])


async def test_a_task_waiting_for_an_approval_is_input_required_and_tasks_update_answers_it(tmp_path: Path) -> None:
    allowed, denied = tmp_path / "allowed.txt", tmp_path / "denied.txt"
    async with connect(tmp_path) as client:
        tasks = []
        for target in (allowed, denied):
            task = await start_task(
                client, "dispatch_effect", harness="asker", prompt=f"write {target} x", approvals="ask"
            )
            tasks.append(await until(client, task.task_id, lambda s: s.status == "input_required"))
        (yes_key, yes), (no_key, no) = (next(iter(inputs(state).items())) for state in tasks)
        assert yes["method"] == "elicitation/create" and yes["params"]["requestedSchema"]["required"] == ["decision"]
        assert "asks to use Write" in yes["params"]["message"] and str(allowed) in yes["params"]["message"]
        assert tasks[0].status_message is not None and tasks[0].status_message.startswith("waiting for approval: Write")
        await tasks_update(
            client.session, tasks[0].task_id, {yes_key: {"action": "accept", "content": {"decision": "allow"}}}
        )
        await tasks_update(
            client.session, tasks[1].task_id,
            {no_key: {"action": "accept", "content": {"decision": "deny", "message": "not that file"}}},
        )  # fmt: skip
        ends = [await settle(client.session, task.task_id) for task in tasks]
        listed = (await call(client, "list_approvals"))["approvals"]
    assert [end.status for end in ends] == ["completed", "completed"]
    assert allowed.read_text() == "x" and not denied.exists()
    assert [(a["approval_id"], a["status"], a["decided_by"], a["message"]) for a in listed] == [
        (yes_key, "allowed", "client", None),
        (no_key, "denied", "client", "not that file"),
    ]
    assert "denied: not that file" in (ends[1].result or {})["structuredContent"]["output_tail"]


async def test_a_cancelled_elicitation_leaves_it_pending_and_answer_approval_still_works(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    async with connect(tmp_path) as client:
        task = await start_task(client, "dispatch_effect", harness="asker", prompt=f"write {target} x", approvals="ask")
        state = await until(client, task.task_id, lambda s: s.status == "input_required")
        (key,) = inputs(state)
        await tasks_update(
            client.session, task.task_id, {key: {"action": "cancel"}, "apr_unknown": {"action": "decline"}}
        )
        still = await until(client, task.task_id, lambda s: s.status == "input_required")
        await call(client, "answer_approval", approval_id=key, decision="allow")
        end = await settle(client.session, task.task_id)
    assert list(inputs(still)) == [key]
    assert end.status == "completed" and target.read_text() == "x"


async def test_a_flow_task_is_input_required_while_a_step_waits_for_its_start(tmp_path: Path) -> None:
    steps = [{"id": "gate", "approval": True, "command": ["touch", str(tmp_path / "ran")]}]
    async with connect(tmp_path) as client:
        task = await start_task(client, "dispatch_flow", steps=steps)
        state = await until(client, task.task_id, lambda s: s.status == "input_required")
        ((key, form),) = inputs(state).items()
        assert "Flow step gate" in form["params"]["message"]
        await tasks_update(client.session, task.task_id, {key: {"action": "decline"}})
        end = await settle(client.session, task.task_id)
        record = (await call(client, "list_approvals"))["approvals"][0]
    assert end.status == "completed" and not (tmp_path / "ran").exists()
    assert end.result is not None and end.result["structuredContent"]["steps"][0]["status"] == "skipped"
    assert (record["status"], record["message"]) == ("denied", "declined by the client")
