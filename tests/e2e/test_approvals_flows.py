"""A flow step with `approval: true` (issue 25) over real stdio: it waits, pending, before it starts,
until its start is allowed; denied, it is skipped with the message; the wait survives a killed server."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from tests.helpers.mcp import call, call_error
from tests.helpers.processes import py, stdio_params, wait_gone

pytestmark = pytest.mark.anyio

PID = "import os; print(os.getppid())"  # the step's parent: the effectd server that runs it


def serve(tmp_path: Path) -> Any:
    return stdio_params(tmp_path / "journal.db", "--allow-any-command")


def gated_flow(tmp_path: Path, **gate: Any) -> list[dict[str, Any]]:
    """a -> b (approval: true) -> c; b and c write files, so a step that never ran leaves none."""
    return [
        {"id": "a", "command": py(PID)},
        {"id": "b", "needs": ["a"], "approval": True, **gate, "command": ["touch", str(tmp_path / "b.ran")]},
        {"id": "c", "needs": ["b"], "command": ["touch", str(tmp_path / "c.ran")]},
    ]


async def start_asked(client: Client, flow_id: str, within_s: float = 30) -> dict[str, Any]:
    """The flow's pending start approval, once its step asks (await_group wakes with it)."""
    with anyio.fail_after(within_s):
        woke = await call(client, "await_group", group=flow_id, timeout_s=within_s)
    assert woke["approvals"], woke
    (approval,) = woke["approvals"]
    return approval  # type: ignore[no-any-return]


def step(flow: dict[str, Any], step_id: str) -> dict[str, Any]:
    return next(s for s in flow["steps"] if s["step_id"] == step_id)  # type: ignore[no-any-return]


async def test_a_step_waits_before_it_starts_until_its_start_is_allowed(tmp_path: Path) -> None:
    async with Client(serve(tmp_path), read_timeout_seconds=70) as client:
        flow = await call(client, "dispatch_flow", steps=gated_flow(tmp_path), background=True)
        approval = await start_asked(client, flow["flow_id"])
        b = step(await call(client, "poll_flow", flow_id=flow["flow_id"]), "b")
        waiting = await call(client, "poll_effect", effect_id=b["effect_id"])
        assert approval["tool"] == "start" and approval["effect_id"] == b["effect_id"]
        assert approval["input"]["step_id"] == "b" and approval["input"]["flow_id"] == flow["flow_id"]
        assert approval["group"] == flow["flow_id"] and approval["status"] == "pending"
        assert waiting["status"] == "pending" and waiting["waiting_for"] == "approval"
        assert waiting["started_at"] is None and not (tmp_path / "b.ran").exists()
        await call(client, "answer_approval", approval_id=approval["approval_id"], decision="allow")
        done = await call(client, "poll_flow", flow_id=flow["flow_id"], wait_s=30)
        again = await call_error(client, "answer_approval", approval_id=approval["approval_id"], decision="deny")
    assert done["status"] == "succeeded", done
    assert (tmp_path / "b.ran").exists() and (tmp_path / "c.ran").exists()
    assert "already answered: allowed by client" in again


async def test_a_denied_step_is_skipped_with_the_message_and_its_dependents_with_it(tmp_path: Path) -> None:
    async with Client(serve(tmp_path), read_timeout_seconds=70) as client:
        flow = await call(client, "dispatch_flow", steps=gated_flow(tmp_path), background=True)
        approval = await start_asked(client, flow["flow_id"])
        message = "not on a Friday"
        await call(client, "answer_approval", approval_id=approval["approval_id"], decision="deny", message=message)
        done = await call(client, "poll_flow", flow_id=flow["flow_id"], wait_s=30)
        b = await call(client, "poll_effect", effect_id=step(done, "b")["effect_id"])
    assert [step(done, s)["status"] for s in "abc"] == ["succeeded", "skipped", "skipped"]
    assert b["cancel_message"] == message and b["error"] == f"its start was denied: {message}"
    assert b["started_at"] is None and b["waiting_for"] is None
    assert not (tmp_path / "b.ran").exists() and not (tmp_path / "c.ran").exists()


async def test_a_rule_or_the_timeout_decides_a_start_nobody_answers(tmp_path: Path) -> None:
    async with Client(serve(tmp_path), read_timeout_seconds=70) as client:
        ruled = await call(
            client, "dispatch_flow", wait_s=30,
            steps=gated_flow(tmp_path, approval_rules=[{"tool": "start", "decision": "allow"}]),
        )  # fmt: skip
        timed = await call(client, "dispatch_flow", steps=gated_flow(tmp_path / "t", approval_timeout_s=0.3), wait_s=30)
        listed = (await call(client, "list_approvals"))["approvals"]
    assert ruled["status"] == "succeeded" and step(timed, "b")["status"] == "skipped"
    assert [(a["status"], a["decided_by"]) for a in listed] == [("allowed", "rule"), ("timed_out", "timeout")]


async def test_a_start_asked_before_the_server_was_killed_is_still_answerable_after_it(tmp_path: Path) -> None:
    params = serve(tmp_path)
    killed = False
    try:
        async with Client(params, read_timeout_seconds=70) as client:
            flow = await call(client, "dispatch_flow", steps=gated_flow(tmp_path), background=True)
            approval = await start_asked(client, flow["flow_id"])
            a = step(await call(client, "poll_flow", flow_id=flow["flow_id"]), "a")
            server = int((await call(client, "poll_effect", effect_id=a["effect_id"]))["output_tail"])
            os.kill(server, signal.SIGKILL)
            killed = True
            await wait_gone([server])
    except (Exception, BaseExceptionGroup):
        if not killed:
            raise
    async with Client(params, read_timeout_seconds=70) as client:
        listed = (await call(client, "list_approvals", status="pending"))["approvals"]
        assert [a["approval_id"] for a in listed] == [approval["approval_id"]]  # asked again, not anew
        await call(client, "answer_approval", approval_id=approval["approval_id"], decision="allow")
        done = await call(client, "poll_flow", flow_id=flow["flow_id"], wait_s=30)
        every = (await call(client, "list_approvals"))["approvals"]
    assert done["status"] == "succeeded", done
    assert [(a["approval_id"], a["status"]) for a in every] == [(approval["approval_id"], "allowed")]


async def test_a_fan_out_step_asks_once_for_all_of_its_items(tmp_path: Path) -> None:
    steps = [{"id": "each", "approval": True, "for_each": ["x", "y", "z"], "command": ["echo", "{{item}}"]}]
    async with Client(serve(tmp_path), read_timeout_seconds=70) as client:
        flow = await call(client, "dispatch_flow", steps=steps, background=True)
        approval = await start_asked(client, flow["flow_id"])
        await call(client, "answer_approval", approval_id=approval["approval_id"], decision="allow")
        done = await call(client, "poll_flow", flow_id=flow["flow_id"], wait_s=30)
        listed = (await call(client, "list_approvals"))["approvals"]
    assert done["status"] == "succeeded", done
    assert [child["status"] for child in step(done, "each")["children"]] == ["succeeded"] * 3
    assert [a["approval_id"] for a in listed] == [approval["approval_id"]]


async def test_a_first_step_that_needs_nothing_asks_before_it_starts_too(tmp_path: Path) -> None:
    ran = tmp_path / "first.ran"
    steps = [{"id": "first", "approval": True, "command": ["touch", str(ran)]}]
    async with Client(serve(tmp_path), read_timeout_seconds=70) as client:
        flow = await call(client, "dispatch_flow", steps=steps, background=True)
        approval = await start_asked(client, flow["flow_id"])
        waiting = await call(client, "poll_effect", effect_id=approval["effect_id"])
        assert waiting["status"] == "pending" and waiting["waiting_for"] == "approval" and not ran.exists()
        await call(client, "answer_approval", approval_id=approval["approval_id"], decision="allow")
        done = await call(client, "poll_flow", flow_id=flow["flow_id"], wait_s=30)
    assert approval["tool"] == "start" and approval["input"]["step_id"] == "first"
    assert done["status"] == "succeeded" and ran.exists()
