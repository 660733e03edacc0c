"""Approvals (issue 25) over real stdio: a harness sub-agent dispatched with `approvals: "ask"` asks
effectd before it writes, through the permission gate effectd gives it, and waits for the answer.

The sub-agent here is `effectd.demo.asker`, which takes Claude Code's options
(`--permission-prompt-tool`, `--mcp-config`) and calls the gate as Claude Code does; the real Claude
Code runs the same path in tests/real.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.helpers.approvals import asker_params, pending_approval
from tests.helpers.mcp import call, call_error
from tests.helpers.processes import wait_gone

pytestmark = pytest.mark.anyio


async def test_a_denied_write_is_not_done_and_the_message_reaches_the_sub_agent(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    async with Client(asker_params(tmp_path), read_timeout_seconds=70) as client:
        started = await call(
            client, "dispatch_effect", harness="asker", prompt=f"write {target} hello", approvals="ask", background=True
        )
        approval = await pending_approval(client, started["effect_id"])
        assert approval["tool"] == "Write" and approval["input"] == {"file_path": str(target), "content": "hello"}
        assert approval["run_id"] == started["run_id"] and approval["decided_by"] is None
        waiting = await call(client, "poll_effect", effect_id=started["effect_id"])
        assert waiting["status"] == "running" and waiting["waiting_for"] == "approval"
        answered = await call(
            client, "answer_approval", approval_id=approval["approval_id"], decision="deny", message="not there"
        )
        assert answered["status"] == "denied" and answered["decided_by"] == "client"
        again = await call_error(client, "answer_approval", approval_id=approval["approval_id"], decision="allow")
        assert "already answered: denied by client" in again
        done = await call(client, "poll_effect", effect_id=started["effect_id"])
        with anyio.fail_after(30):
            while done["status"] == "running":
                done = await call(client, "poll_effect", effect_id=started["effect_id"])
                await anyio.sleep(0.05)
    assert done["status"] == "succeeded" and done["waiting_for"] is None
    assert "denied: not there" in done["output_tail"]
    assert not target.exists()


async def test_an_allowed_write_is_done_within_half_a_second_of_the_answer(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    async with Client(asker_params(tmp_path), read_timeout_seconds=70) as client:
        started = await call(
            client, "dispatch_effect", harness="asker", prompt=f"write {target} hello", approvals="ask", background=True
        )
        approval = await pending_approval(client, started["effect_id"])
        answered_at = time.monotonic()
        await call(client, "answer_approval", approval_id=approval["approval_id"], decision="allow")
        with anyio.fail_after(30):
            while not target.exists():  # noqa: ASYNC110 - the sub-agent's write, polled with a bound
                await anyio.sleep(0.005)
        took = time.monotonic() - answered_at
        listed = (await call(client, "list_approvals", effect_id=started["effect_id"]))["approvals"]
    assert target.read_text() == "hello"
    assert took < 5, took  # the bound on a loaded machine; benchmarks/bench_approvals.py measures it
    assert [(a["status"], a["decided_by"]) for a in listed] == [("allowed", "client")]


async def test_a_rule_decides_without_asking_and_a_timeout_denies(tmp_path: Path) -> None:
    allowed, refused, late = tmp_path / "allowed.txt", tmp_path / "refused.txt", tmp_path / "late.txt"
    rules = [
        {"tool": "Write", "input_matches": "refused", "decision": "deny"},
        {"tool": "Write", "input_matches": r"allowed\.txt", "decision": "allow"},
    ]
    async with Client(asker_params(tmp_path), read_timeout_seconds=70) as client:
        records = []
        for target in (allowed, refused):
            records.append(
                await call(
                    client,
                    "dispatch_effect",
                    harness="asker",
                    prompt=f"write {target} x",
                    approvals="ask",
                    approval_rules=rules,
                    wait_s=40,
                )  # fmt: skip
            )
        timed = await call(
            client, "dispatch_effect", harness="asker", prompt=f"write {late} x", approvals="ask",
            approval_timeout_s=0.5, wait_s=40,
        )  # fmt: skip
        listed = (await call(client, "list_approvals"))["approvals"]
    assert allowed.read_text() == "x" and not refused.exists() and not late.exists()
    assert [(a["status"], a["decided_by"]) for a in listed] == [
        ("allowed", "rule"),
        ("denied", "rule"),
        ("timed_out", "timeout"),
    ]
    assert "denied: denied by the approval rule for Write matching 'refused'" in records[1]["output_tail"]
    assert "no answer within approval_timeout_s (0.5 s)" in timed["output_tail"]
    assert all(record["status"] == "succeeded" for record in [*records, timed])


async def test_approvals_that_cannot_work_are_refused_and_nothing_runs(tmp_path: Path) -> None:
    async with Client(asker_params(tmp_path), read_timeout_seconds=70) as client:
        command = await call_error(client, "dispatch_effect", command=["true"], approvals="ask")
        no_hook = await call_error(client, "dispatch_effect", harness="plain", prompt="p", approvals="ask")
        alone = await call_error(
            client, "dispatch_effect", harness="asker", prompt="p", approval_rules=[{"tool": "x", "decision": "allow"}]
        )
        regex = await call_error(
            client, "dispatch_effect", harness="asker", prompt="p", approvals="ask",
            approval_rules=[{"tool": "Write", "input_matches": "(", "decision": "allow"}],
        )  # fmt: skip
        listed = await call(client, "list_effects")
    assert "for a harness sub-agent" in command and "asker" in command
    assert "harness 'plain' has no permission hook" in no_hook and "asker, claude" in no_hook
    assert '`approval_rules` goes with `approvals: "ask"`' in alone
    assert "is not a regular expression" in regex
    assert listed["effects"] == []


async def test_await_group_wakes_once_per_request_and_the_orchestrator_answers_from_it(tmp_path: Path) -> None:
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    async with Client(asker_params(tmp_path), read_timeout_seconds=70) as client:
        ids = []
        for target in (first, second):
            started = await call(
                client, "dispatch_effect", harness="asker", prompt=f"write {target} x", approvals="ask",
                group="agents", background=True,
            )  # fmt: skip
            ids.append(started["effect_id"])
        cursor, answered = 0, 0
        with anyio.fail_after(60):
            while True:  # an orchestrator's loop: wait, answer what is asked, wait again
                woke = await call(client, "await_group", group="agents", cursor=cursor, timeout_s=30)
                assert not woke["timed_out"], woke
                cursor = woke["cursor"]
                for approval in woke["approvals"] or []:
                    await call(client, "answer_approval", approval_id=approval["approval_id"], decision="allow")
                    answered += 1
                if woke["complete"]:
                    break
    assert answered == 2, "each request woke await_group once"
    assert first.read_text() == "x" and second.read_text() == "x"


async def test_a_request_left_pending_by_a_killed_server_is_denied_at_the_next_start(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    params = asker_params(tmp_path)
    killed = False
    try:
        async with Client(params, read_timeout_seconds=70) as client:
            started = await call(
                client, "dispatch_effect", harness="asker", prompt=f"write {target} x", approvals="ask",
                background=True,
            )  # fmt: skip
            approval = await pending_approval(client, started["effect_id"])
            leader = (await call(client, "poll_effect", effect_id=started["effect_id"]))["pid"]
            status = await anyio.Path(f"/proc/{leader}/status").read_text()
            server = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
            os.kill(server, signal.SIGKILL)
            killed = True
            await wait_gone([server, leader])
    except (Exception, BaseExceptionGroup):
        if not killed:
            raise
    async with Client(params, read_timeout_seconds=70) as client:
        listed = (await call(client, "list_approvals"))["approvals"]
        record = await call(client, "poll_effect", effect_id=started["effect_id"])
    assert [(a["approval_id"], a["status"]) for a in listed] == [(approval["approval_id"], "denied")]
    assert "effectd stopped before it was answered" in listed[0]["message"]
    assert record["status"] == "failed" and record["waiting_for"] is None
    assert not target.exists()
