"""Approvals (issue 25) answered from outside the server whose sub-agent asks: `effectd approvals`,
`effectd approve` and `effectd deny` on the command line, and `answer_approval` on another server that
shares the journal. Real `effectd serve` processes over stdio, with `effectd.demo.asker` as
the sub-agent; each answer reaches that sub-agent through its own server's control channel.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from tests.helpers.approvals import asker_params, pending_approval
from tests.helpers.mcp import call, call_error
from tests.helpers.processes import effectd_bin, wait_gone

pytestmark = pytest.mark.anyio


async def effectd(db: Path, *args: str) -> tuple[int, str, str]:
    """Runs `effectd ARGS --db DB`; its exit code, stdout and stderr."""
    with anyio.fail_after(60):
        done = await anyio.run_process([effectd_bin(), *args, "--db", str(db)], env=dict(os.environ), check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def asking(client: Client, target: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Dispatches the sub-agent to write `target`, asking first; its record and its pending approval."""
    started = await call(
        client, "dispatch_effect", harness="asker", prompt=f"write {target} hello", approvals="ask", background=True
    )
    return started, await pending_approval(client, started["effect_id"])


async def ended(client: Client, effect_id: str) -> dict[str, Any]:
    with anyio.fail_after(30):
        while (record := await call(client, "poll_effect", effect_id=effect_id))["status"] == "running":  # noqa: ASYNC110 - polled with a bound
            await anyio.sleep(0.05)
    return record  # type: ignore[no-any-return]


def control_rows(db: Path) -> list[tuple[str, str | None]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT action, answer FROM control ORDER BY id").fetchall()


def server_pid(db: Path, server_id: str) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        (pid,) = conn.execute("SELECT pid FROM servers WHERE server_id = ?", (server_id,)).fetchone()
    return int(pid)


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The server `pid` stopped (SIGSTOP): alive, but it answers nothing until it is continued."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


@asynccontextmanager
async def two_servers(tmp_path: Path) -> AsyncIterator[tuple[Client, Client]]:
    """Two servers on one journal, with the sub-agent's profile; a forwarded answer waits 1 s for its owner."""
    params = asker_params(tmp_path)
    config = anyio.Path(params.args[params.args.index("--config") + 1])
    await config.write_text("peer_answer_s = 1\n" + await config.read_text())
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(Client(params, read_timeout_seconds=70))
        await call(a, "list_harnesses")  # started and answering before the second one starts
        b = await stack.enter_async_context(Client(params, read_timeout_seconds=70))
        yield a, b


async def test_effectd_approve_lets_the_sub_agent_write(tmp_path: Path) -> None:
    target, db = tmp_path / "out.txt", tmp_path / "journal.db"
    async with Client(asker_params(tmp_path), read_timeout_seconds=70) as client:
        started, approval = await asking(client, target)
        code, listed, _ = await effectd(db, "approvals")
        assert code == 0 and [a["approval_id"] for a in json.loads(listed)] == [approval["approval_id"]]
        assert json.loads(listed)[0] == approval  # as list_approvals has it
        code, out, err = await effectd(db, "approve", approval["approval_id"])
        assert (code, err) == (0, ""), err
        answered = json.loads(out)
        record = await ended(client, started["effect_id"])
        after = (await call(client, "list_approvals", effect_id=started["effect_id"]))["approvals"]
    assert (answered["approval_id"], answered["status"], answered["decided_by"]) == (
        approval["approval_id"],
        "allowed",
        "cli",
    )
    assert target.read_text() == "hello" and f"wrote {target}" in record["output_tail"]
    assert after == [answered]
    assert control_rows(db) == [("approve", "accepted")]


async def test_effectd_deny_with_a_message_and_an_answer_given_twice(tmp_path: Path) -> None:
    target, db = tmp_path / "out.txt", tmp_path / "journal.db"
    async with Client(asker_params(tmp_path), read_timeout_seconds=70) as client:
        started, approval = await asking(client, target)
        code, out, err = await effectd(db, "deny", approval["approval_id"], "--message", "not in this repo")
        assert (code, err) == (0, ""), err
        record = await ended(client, started["effect_id"])
        again = await effectd(db, "approve", approval["approval_id"])
        unknown = await effectd(db, "deny", "apr_nothing")
        pending = await effectd(db, "approvals")
        every = await effectd(db, "approvals", "--all", "--effect", started["effect_id"])
        listed = (await call(client, "list_approvals"))["approvals"]
    denied = json.loads(out)
    assert (denied["status"], denied["decided_by"], denied["message"]) == ("denied", "cli", "not in this repo")
    assert not target.exists() and "denied: not in this repo" in record["output_tail"]
    assert listed == [denied]
    assert again[0] == 1 and again[1] == ""
    assert (
        f"approval {approval['approval_id']} is already answered: denied by cli at {denied['answered_at']}" in again[2]
    )
    assert unknown[0] == 1 and "unknown approval apr_nothing" in unknown[2]
    assert pending[:2] == (0, "[]\n") and json.loads(every[1]) == [denied]


async def test_no_live_server_answering_exits_2_and_the_answer_is_never_given_later(tmp_path: Path) -> None:
    target, db = tmp_path / "out.txt", tmp_path / "journal.db"
    async with Client(asker_params(tmp_path), read_timeout_seconds=70) as client:
        started, approval = await asking(client, target)
        with stopped(server_pid(db, started["owner"])):
            code, out, err = await effectd(db, "approve", approval["approval_id"], "--wait", "0.5")
        assert (code, out) == (2, "")
        assert "no live server answered within 0.5 s; the request expired and will not be carried out" in err
        # The server runs again and polls its requests: the expired one is never carried out. Its next one is.
        code, out, err = await effectd(db, "deny", approval["approval_id"], "--message", "later")
        assert code == 0, err
        record = await ended(client, started["effect_id"])
    assert (json.loads(out)["status"], json.loads(out)["message"]) == ("denied", "later")
    assert not target.exists() and "denied: later" in record["output_tail"]
    assert control_rows(db) == [("approve", "expired"), ("approve", "accepted")]


async def test_answer_approval_on_another_server_reaches_the_sub_agent_of_its_owner(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    async with two_servers(tmp_path) as (a, b):
        started, approval = await asking(a, target)
        seen = await pending_approval(b, started["effect_id"])  # B follows A's approvals in the journal
        waiting_on_b = (await call(b, "poll_effect", effect_id=started["effect_id"]))["waiting_for"]
        answered = await call(b, "answer_approval", approval_id=approval["approval_id"], decision="allow")
        record = await ended(a, started["effect_id"])
        with anyio.fail_after(10):
            while (on_b := (await call(b, "list_approvals"))["approvals"])[0]["status"] == "pending":  # noqa: ASYNC110 - polled with a bound
                await anyio.sleep(0.05)
        on_a = (await call(a, "list_approvals"))["approvals"]
        again = await call_error(b, "answer_approval", approval_id=approval["approval_id"], decision="deny")
    assert seen == approval
    assert waiting_on_b == "approval", "B's record of A's effect says what it waits for"
    assert (answered["status"], answered["decided_by"]) == ("allowed", "client")
    assert target.read_text() == "hello" and record["status"] == "succeeded"
    assert on_b == on_a == [answered]
    assert "already answered: allowed by client" in again


async def test_an_answer_its_owner_does_not_take_in_time_is_withdrawn_and_never_given(tmp_path: Path) -> None:
    target, db = tmp_path / "out.txt", tmp_path / "journal.db"
    async with two_servers(tmp_path) as (a, b):
        started, approval = await asking(a, target)
        await pending_approval(b, started["effect_id"])
        with stopped(server_pid(db, started["owner"])):
            refused = await call_error(b, "answer_approval", approval_id=approval["approval_id"], decision="allow")
        assert "did not answer within 1 s" in refused and "withdrawn and will not be carried out later" in refused
        denied = await call(b, "answer_approval", approval_id=approval["approval_id"], decision="deny", message="no")
        record = await ended(a, started["effect_id"])
    assert (denied["status"], denied["decided_by"], denied["message"]) == ("denied", "client", "no")
    assert not target.exists() and "denied: no" in record["output_tail"]
    assert control_rows(db) == [("approve", "withdrawn"), ("approve", "accepted")]


async def test_a_killed_servers_pending_approval_is_denied_by_the_server_that_takes_it_over(tmp_path: Path) -> None:
    target, db = tmp_path / "out.txt", tmp_path / "journal.db"
    params = asker_params(tmp_path)
    killed = False
    async with Client(params, read_timeout_seconds=70) as b:
        await call(b, "list_harnesses")
        try:
            async with Client(params, read_timeout_seconds=70) as a:
                started, approval = await asking(a, target)
                await pending_approval(b, started["effect_id"])
                server = server_pid(db, started["owner"])
                leader = (await call(a, "poll_effect", effect_id=started["effect_id"]))["pid"]
                os.kill(server, signal.SIGKILL)  # the sub-agent dies with it: nobody waits for the answer
                killed = True
                await wait_gone([server, leader])
        except (Exception, BaseExceptionGroup):
            if not killed:
                raise
        with anyio.fail_after(20):  # B sees A gone within seconds (peer_check_s), and takes its effects over
            while (listed := (await call(b, "list_approvals"))["approvals"])[0]["status"] == "pending":  # noqa: ASYNC110 - polled with a bound
                await anyio.sleep(0.05)
        record = await call(b, "poll_effect", effect_id=started["effect_id"])
    assert [(a["approval_id"], a["status"], a["decided_by"]) for a in listed] == [
        (approval["approval_id"], "denied", None)
    ]
    assert "effectd stopped before it was answered" in listed[0]["message"]
    assert record["status"] == "failed" and not target.exists()
