"""Servers that die or stop while others live: real `effectd serve` processes over stdio on one journal.

A server is SIGSTOPped (a stopped peer: alive, but answering nothing) or SIGKILLed (a dead one) while
the others keep serving; each test checks what the live servers report, that nothing is carried out
late, and ends by checking the journal: exactly one terminal event per effect.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import datetime
from functools import partial
from pathlib import Path

import anyio
import pytest
from mcp import Client

from tests.e2e.test_sessions import TICKING, assert_one_terminal_event_each, pids_of, rows, servers, wait_gone
from tests.helpers.mcp import call, call_error, read_until
from tests.helpers.processes import CHILD_WITH_GRANDCHILD, SLEEP, pid_alive, py

pytestmark = [pytest.mark.anyio]


def fast_config(tmp_path: Path, **values: float) -> list[str]:
    """`--config` of a file with short peer bounds, so a test waits seconds, not the defaults."""
    path = tmp_path / "effectd.toml"
    path.write_text("".join(f"{key} = {value}\n" for key, value in values.items()))
    return ["--config", str(path)]


async def stubborn_pids(client: Client, effect_id: str) -> list[int]:
    text = await read_until(client, effect_id, "pids ")
    return [int(p) for p in text.split("pids ", 1)[1].split("\n", 1)[0].split()]


@asynccontextmanager
async def stopped(pid: int) -> AsyncIterator[None]:
    """The process `pid` SIGSTOPped for the block, and always continued after it."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_a_cancel_forwarded_to_a_stopped_server_is_refused_withdrawn_and_never_carried_out_later(
    tmp_path: Path,
) -> None:
    db = tmp_path / "journal.db"
    async with servers(db, 2, *fast_config(tmp_path, peer_answer_s=2)) as (a, b):
        running = await call(a, "dispatch_effect", command=py(TICKING), background=True)
        server, child, grandchild = await pids_of(a, running["effect_id"])
        async with stopped(server):
            began = time.monotonic()
            error = await call_error(b, "cancel_effect", effect_id=running["effect_id"], reason="too late", grace_s=0.2)
            took = time.monotonic() - began
        assert "did not answer" in error and "withdrawn" in error, error
        assert took < 6, f"the refusal took {took:.1f} s"
        (request,) = rows(db, "select answer from control where effect_id = ?", running["effect_id"])
        assert request["answer"] == "withdrawn"
        # A, resumed, passes over the withdrawn request: a cancel B forwards now is answered (so A's
        # control channel has run since), and the first effect still runs.
        other = await call(a, "dispatch_effect", command=py(SLEEP, "60"), background=True)
        done = await call(b, "cancel_effect", effect_id=other["effect_id"], grace_s=0.2)
        assert done["status"] == "cancelled"
        text = await read_until(a, running["effect_id"], "tick 3")
        seen = await call(a, "poll_effect", effect_id=running["effect_id"])
        assert (seen["status"], seen["cancel_reason"]) == ("running", None), text[-200:]
        assert pid_alive(child) and pid_alive(grandchild)
        await call(a, "cancel_effect", effect_id=running["effect_id"], grace_s=0.2)
        await wait_gone([child, grandchild])
    assert_one_terminal_event_each(db)


async def test_a_cancel_whose_asking_server_died_is_never_carried_out_by_the_stopped_owner(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    async with servers(db, 2) as (a, c):
        running = await call(a, "dispatch_effect", command=py(TICKING), background=True)
        server, child, grandchild = await pids_of(a, running["effect_id"])
        killed: list[int] = []
        async with stopped(server):
            with suppress(Exception, BaseExceptionGroup):
                async with servers(db, 1) as (b,), anyio.create_task_group() as tg:
                    tg.start_soon(partial(call, b, "cancel_effect", effect_id=running["effect_id"]))
                    asking = "select args from control where effect_id = ?"
                    with anyio.fail_after(10):
                        while not (asked := rows(db, asking, running["effect_id"])):  # noqa: ASYNC110
                            await anyio.sleep(0.02)
                    by = json.loads(asked[0]["args"])["by"]
                    (asker,) = rows(db, "select pid from servers where server_id = ?", by)
                    os.kill(asker["pid"], signal.SIGKILL)  # B dies before it could withdraw its request
                    killed.append(asker["pid"])
                    await wait_gone(killed)
        assert killed, "B was not killed while it waited"
        # A, resumed, answers C's cancel of another effect (so its control channel has run since), and
        # B's request it answers `withdrawn`: its effect still runs.
        other = await call(a, "dispatch_effect", command=py(SLEEP, "60"), background=True)
        assert (await call(c, "cancel_effect", effect_id=other["effect_id"], grace_s=0.2))["status"] == "cancelled"
        (request,) = rows(db, "select answer from control where effect_id = ?", running["effect_id"])
        assert request["answer"] == "withdrawn"
        await read_until(a, running["effect_id"], "tick 3")
        seen = await call(a, "poll_effect", effect_id=running["effect_id"])
        assert (seen["status"], seen["cancel_reason"]) == ("running", None)
        await call(a, "cancel_effect", effect_id=running["effect_id"], grace_s=0.2)
        await wait_gone([child, grandchild])
    assert_one_terminal_event_each(db)


async def test_a_live_server_settles_a_sigkilled_peers_effects_within_five_seconds(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    config = fast_config(tmp_path, peer_check_s=0.2)
    async with servers(db, 1, *config) as (b,):
        kept = await call(b, "dispatch_effect", command=py(TICKING), background=True)
        _, kept_child, _ = await pids_of(b, kept["effect_id"])
        with suppress(Exception, BaseExceptionGroup):
            async with servers(db, 1, *config, "--max-concurrency", "1") as (a,):
                doomed = await call(a, "dispatch_effect", command=py(TICKING), background=True, group="a")
                queued = await call(a, "dispatch_effect", command=py("print('ran after all')"), background=True)
                pending = await call(
                    a,
                    "dispatch_effect",
                    command=py("print('never')"),
                    background=True,
                    depends_on=[doomed["effect_id"]],
                )
                server, child, grandchild = await pids_of(a, doomed["effect_id"])
                os.kill(server, signal.SIGKILL)
                killed = time.time()  # the journal's clock: this host's
                await wait_gone([server, child])
        # B depends on A's effect, dispatched after A died: it skips once B settles A's.
        mine = await call(
            b, "dispatch_effect", command=py("print('never')"), background=True, depends_on=[doomed["effect_id"]]
        )
        ids = [doomed["effect_id"], queued["effect_id"], pending["effect_id"], mine["effect_id"]]
        waited = await call(b, "await_group", effect_ids=ids, timeout_s=20)
        assert waited["complete"], waited
        by_id = {r["effect_id"]: r for r in waited["done"]}
        assert (by_id[doomed["effect_id"]]["status"], by_id[doomed["effect_id"]]["error"]) == ("failed", "interrupted")
        assert by_id[queued["effect_id"]]["status"] == "succeeded"
        assert by_id[queued["effect_id"]]["output_tail"] == "ran after all\n"
        assert by_id[pending["effect_id"]]["status"] == "skipped"
        assert by_id[mine["effect_id"]]["status"] == "skipped"
        finished = datetime.fromisoformat(by_id[doomed["effect_id"]]["finished_at"].replace("Z", "+00:00"))
        settled_after = finished.timestamp() - killed
        await wait_gone([grandchild], within_s=5)  # the dead server's leftover, killed as at start
        assert pid_alive(kept_child), "settling the dead peer touched the live server's own effect"
        assert (await call(b, "poll_effect", effect_id=kept["effect_id"]))["status"] == "running"
        await call(b, "cancel_effect", effect_id=kept["effect_id"], grace_s=0.2)
    assert settled_after < 5, f"the dead peer's effect was settled {settled_after:.1f} s after the kill"
    assert_one_terminal_event_each(db)


async def test_a_stopped_peer_is_not_taken_for_dead(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    async with servers(db, 2, *fast_config(tmp_path, peer_check_s=0.2)) as (a, b):
        running = await call(a, "dispatch_effect", command=py(TICKING), background=True)
        server, child, grandchild = await pids_of(a, running["effect_id"])
        async with stopped(server):
            # B looks at its peers every 0.2 s; 20 of its looks pass, and A's effect is untouched.
            for _ in range(20):
                seen = await call(b, "poll_effect", effect_id=running["effect_id"])
                assert seen["status"] == "running"
                await anyio.sleep(0.2)
            (row,) = rows(db, "select adopted_by from servers where server_id = ?", running["owner"])
            assert row["adopted_by"] is None
        assert pid_alive(child) and pid_alive(grandchild)
        await read_until(a, running["effect_id"], "tick 2")
        await call(a, "cancel_effect", effect_id=running["effect_id"], grace_s=0.2)
    assert_one_terminal_event_each(db)


async def escalates(canceller: Client, owner: Client, effect_id: str, expected_reason: str) -> None:
    """A first cancel (grace 600 s) hangs in the background; a second with grace 0.5 s ends the effect
    (SIGKILL) within seconds, and the first call returns the same terminal record."""
    pids = await stubborn_pids(owner, effect_id)
    first: dict[str, dict] = {}

    async def long_cancel() -> None:
        first["record"] = await call(canceller, "cancel_effect", effect_id=effect_id, grace_s=600)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(long_cancel)
            while (await call(owner, "poll_effect", effect_id=effect_id))["cancel_reason"] is None:  # noqa: ASYNC110
                await anyio.sleep(0.05)
            began = time.monotonic()
            second = await call(canceller, "cancel_effect", effect_id=effect_id, grace_s=0.5)
            took = time.monotonic() - began
    assert (second["status"], second["cancel_reason"], second["signal"]) == ("cancelled", expected_reason, 9)
    assert first["record"]["status"] == "cancelled"
    assert took < 5, f"the second cancel took {took:.1f} s"
    await wait_gone(pids, within_s=5)


async def test_a_second_cancel_with_a_shorter_grace_escalates_on_the_same_server_and_forwarded(
    tmp_path: Path,
) -> None:
    db = tmp_path / "journal.db"
    async with servers(db, 2) as (a, b):
        here = await call(a, "dispatch_effect", command=py(CHILD_WITH_GRANDCHILD), background=True)
        await escalates(a, a, here["effect_id"], "user")
        there = await call(a, "dispatch_effect", command=py(CHILD_WITH_GRANDCHILD), background=True)
        await escalates(b, a, there["effect_id"], "user")
    assert_one_terminal_event_each(db)


async def test_a_race_loser_superseded_with_a_long_grace_is_escalated_by_a_later_cancel(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    async with servers(db, 1) as (a,):
        loser = await call(a, "dispatch_effect", command=py(CHILD_WITH_GRANDCHILD), background=True, grace_s=600)
        pids = await stubborn_pids(a, loser["effect_id"])
        winner = await call(a, "dispatch_effect", command=py(SLEEP, "0.2"), background=True)
        raced: dict[str, dict] = {}

        async def race() -> None:
            ids = [loser["effect_id"], winner["effect_id"]]
            raced["wait"] = await call(a, "await_group", effect_ids=ids, mode="first_success", timeout_s=20)

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(race)
                while (await call(a, "poll_effect", effect_id=loser["effect_id"]))["cancel_reason"] is None:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
                began = time.monotonic()
                record = await call(a, "cancel_effect", effect_id=loser["effect_id"], grace_s=0.5)
                took = time.monotonic() - began
        assert (record["status"], record["cancel_reason"]) == ("cancelled", "superseded")
        assert took < 5, f"the later cancel took {took:.1f} s"
        assert raced["wait"]["satisfied"]
        await wait_gone(pids, within_s=5)
    assert_one_terminal_event_each(db)


@pytest.mark.parametrize("mode", ["first_success", "quorum"])
async def test_a_race_decided_on_another_server_cancels_its_losers_as_superseded(tmp_path: Path, mode: str) -> None:
    db = tmp_path / "journal.db"
    async with servers(db, 2) as (a, b):
        loser = await call(a, "dispatch_effect", command=py(TICKING), background=True)
        _, child, grandchild = await pids_of(a, loser["effect_id"])
        winner = await call(a, "dispatch_effect", command=py(SLEEP, "0.2"), background=True)
        ids = [loser["effect_id"], winner["effect_id"]]
        extra = {"k": 1} if mode == "quorum" else {}
        waited = await call(b, "await_group", effect_ids=ids, mode=mode, timeout_s=20, **extra)
        assert waited["satisfied"] and [w["effect_id"] for w in waited["winners"]] == [winner["effect_id"]]
        ended = await call(a, "poll_effect", effect_id=loser["effect_id"])
        assert (ended["status"], ended["cancel_reason"]) == ("cancelled", "superseded")
        await wait_gone([child, grandchild])
    assert_one_terminal_event_each(db)
