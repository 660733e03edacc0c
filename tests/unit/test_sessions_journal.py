"""Sharing one journal, below the MCP layer: two writers, the start-up lock, liveness, two engines.

The real-process tests (several `effectd serve` over stdio) are in test_sessions.py; these pin the
parts each of them rests on, each in a way that fails against code that assumes one writer.
"""

from __future__ import annotations

import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from effectd.config.settings import Settings
from effectd.engine.core import Engine
from effectd.errors import DatabaseBusyError
from effectd.flows.models import FlowRequest
from effectd.journal.peer_writes import KeyTakenError
from effectd.journal.projection import Event
from effectd.journal.store import Journal, replay_projection
from effectd.model.arguments import EffectRequest
from effectd.model.records import EffectSpec
from effectd.peers.ownership import StartLock, server_alive
from effectd.runner.procfs import process_start_time
from effectd.supervisor import events
from tests.helpers.fakes import FakeRunner
from tests.helpers.mcp import open_engine
from tests.helpers.processes import SLEEP, py

pytestmark = pytest.mark.anyio


def rows(db: Path, sql: str, *params: object) -> list[dict]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(sql, params)]


def requested(effect_id: str, key: str | None = None) -> Event:
    spec = EffectSpec(kind="command", command=["true"], key=key)
    return events.requested(effect_id, "run", spec, "srv_test")


async def test_two_writers_take_gap_free_seqs_in_commit_order(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    async with Journal.open(db) as one, Journal.open(db) as two:
        taken: list[int] = []

        async def write(journal: Journal, n: int) -> None:
            for i in range(20):
                (event,) = await journal.append(Event("RUN_CREATED", f"run-{n}-{i}", None, {"created_at": "x"}))
                taken.append(event.seq)

        async with anyio.create_task_group() as tg:
            tg.start_soon(write, one, 1)
            tg.start_soon(write, two, 2)
    assert sorted(taken) == list(range(1, 41)), "seqs collided or left gaps"
    assert [r["seq"] for r in rows(db, "select seq from events order by seq")] == list(range(1, 41))


async def test_a_writer_does_not_fold_over_a_state_another_writer_changed(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    async with Journal.open(db) as one, Journal.open(db) as two:
        await one.append(requested("eff_a"))  # `one` caches the effect's state as it wrote it
        started = Event(
            "EFFECT_STARTED", "run", "eff_a", {"started_at": "t1", "pid": 42, "pid_start": 7, "command": ["true"]}
        )
        await two.append(started)
        await one.append(Event("EFFECT_PROGRESS", "run", "eff_a", {"progress": {"n": 1}}))
    row = rows(db, "select status, started_at, pid from effects")[0]
    assert row == {"status": "running", "started_at": "t1", "pid": 42}, "a stale cached state was written back"
    assert (await replay_projection(db))["effects"][0]["status"] == "running"


async def test_a_key_taken_by_another_writer_is_refused_to_that_dispatch_alone(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    async with Journal.open(db) as one, Journal.open(db) as two:
        await one.append(requested("eff_first", key="k"))
        results: dict[str, object] = {}

        async def append(name: str, event: Event) -> None:
            try:
                results[name] = (await two.append(event))[0].seq
            except KeyTakenError as taken:
                results[name] = taken

        async with anyio.create_task_group() as tg:  # both in one batch of `two`'s group commit
            tg.start_soon(append, "reused", requested("eff_second", key="k"))
            tg.start_soon(append, "other", requested("eff_other", key="other"))
    refused = results["reused"]
    assert isinstance(refused, KeyTakenError) and refused.effect_id == "eff_first"
    assert results["other"] == 2, "the rest of the batch was not written, or seqs left a gap"
    assert sorted(r["effect_id"] for r in rows(db, "select effect_id from effects")) == ["eff_first", "eff_other"]


async def test_the_start_lock_follows_the_file_through_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real" / "journal.db"
    real.parent.mkdir()
    real.touch()
    link = tmp_path / "link.db"
    link.symlink_to(real)
    held = StartLock(real)
    await held.acquire()
    try:
        with pytest.raises(DatabaseBusyError, match="held"):
            await StartLock(link).acquire(within_s=0.2)
        with pytest.raises(DatabaseBusyError):
            await StartLock(tmp_path / "real" / ".." / "real" / "journal.db").acquire(within_s=0.2)
    finally:
        held.release()
    again = StartLock(link)
    await again.acquire(within_s=1)
    again.release()


def test_a_server_is_alive_only_while_its_pid_runs_the_process_started_at_the_recorded_time(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        deadline = time.monotonic() + 5
        while (start := process_start_time(child.pid)) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        host = socket.gethostname()
        row = {"server_id": "srv_x", "pid": child.pid, "pid_start": start, "host": host, "stopped_at": None}
        db = tmp_path / "journal.db"
        assert server_alive(row, db)
        assert not server_alive({**row, "pid_start": (start or 0) + 1}, db), "a reused pid was taken for the server"
        assert not server_alive({**row, "stopped_at": "2026-01-01T00:00:00Z"}, db)
        assert server_alive({**row, "host": "another-host"}, db), "a server of another machine was declared dead"
    finally:
        child.kill()
        child.wait()
    assert not server_alive(row, db)


async def test_two_engines_on_one_journal_share_effects_and_a_restart_keeps_the_others(settings: Settings) -> None:
    async with open_engine(settings) as one:
        running = (await one.dispatch(EffectRequest(command=py(SLEEP, "30"), group="g"))).record
        async with open_engine(settings) as two:
            assert (await two.poll(running.effect_id)).owner == one.info()["server_id"]
            mine = (await two.dispatch(EffectRequest(command=py("print('two')"), group="g"))).record
            waited = await one.await_group(effect_ids=[mine.effect_id], timeout_s=10)
            assert waited.done[0].status == "succeeded" and waited.done[0].output_tail == "two\n"
        async with open_engine(settings) as three:  # starts after `two` stopped: recovers only `two`'s
            assert (await three.poll(running.effect_id)).status == "running"
            cancelled = await three.cancel(running.effect_id, grace_s=0.1)
            assert (cancelled.status, cancelled.cancel_reason) == ("cancelled", "user")
        assert (await one.poll(running.effect_id)).status == "cancelled"
    ends = rows(
        settings.db,
        "select effect_id, count(*) as n from events where type in "
        "('EFFECT_RESOLVED', 'EFFECT_FAILED', 'EFFECT_CANCELLED', 'EFFECT_SKIPPED') group by effect_id",
    )
    assert len(ends) == 2 and all(r["n"] == 1 for r in ends)


async def test_recovery_takes_effects_of_gone_and_pre_session_servers_never_of_a_live_one(
    settings: Settings, tmp_path: Path
) -> None:
    runner = FakeRunner()
    async with Engine.open(settings, runner=runner) as engine:
        live = (await engine.dispatch(EffectRequest(command=["fake", "hang"]))).record
        legacy = (await engine.dispatch(EffectRequest(command=["fake", "hang"]))).record
        with anyio.fail_after(5):
            while {(await engine.poll(r.effect_id)).status for r in (live, legacy)} != {"running"}:  # noqa: ASYNC110
                await anyio.sleep(0.005)
        while engine.stats()["journal_commits_in_flight"]:  # noqa: ASYNC110
            await anyio.sleep(0.001)
        crashed = tmp_path / "crashed"
        crashed.mkdir()
        shutil.copyfile(settings.db, crashed / "journal.db")
        shutil.copyfile(f"{settings.db}-wal", crashed / "journal.db-wal")
    db = crashed / "journal.db"
    other = await anyio.open_process([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with anyio.fail_after(5):
            while (start := process_start_time(other.pid)) is None:  # noqa: ASYNC110 - /proc, polled
                await anyio.sleep(0.01)
        with sqlite3.connect(db) as conn:
            # The server that dispatched `live` is another process, alive; `legacy` has no owner, as an
            # effect of a journal from before sessions, whose servers nobody took over yet.
            conn.execute(
                "update servers set pid = ?, pid_start = ?, stopped_at = null where server_id = ?",
                (other.pid, start, live.owner),
            )
            conn.execute("update effects set owner = null where effect_id = ?", (legacy.effect_id,))
            conn.execute("update servers set adopted_by = null where server_id = ''")
        after = FakeRunner()
        async with Engine.open(replace(settings, db=db), runner=after) as engine:
            kept = await engine.poll(live.effect_id)
            recovered = await engine.poll(legacy.effect_id)
        assert [asked.effect_id for asked in after.leftovers_asked] == [legacy.effect_id]
        assert (recovered.status, recovered.error, recovered.owner) == ("failed", "interrupted", "")
        assert (kept.status, kept.owner) == ("running", live.owner), "a live server's effect was recovered"
    finally:
        other.kill()
        await other.aclose()


async def test_another_servers_flow_is_polled_and_awaited_until_it_ends(settings: Settings, tmp_path: Path) -> None:
    from effectd.flows.models import Step

    gate = tmp_path / "gate"
    wait_gate = "import os, sys, time\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.02)\nprint('through')"
    async with open_engine(settings) as one, open_engine(settings) as two:
        steps = [
            Step(id="first", command=py(wait_gate, str(gate))),
            Step(id="second", command=py("print('after')"), needs=["first"]),
        ]
        flow = (await one.dispatch_flow(FlowRequest(steps=steps))).record
        seen = await two.poll_flow(flow.flow_id)
        assert (seen.status, seen.owner) == ("running", one.info()["server_id"])
        gate.touch()  # the flow goes on in `one`; `two` waits for its end through the journal
        ended = await two.poll_flow(flow.flow_id, wait_s=20)
        assert ended.status == "succeeded", ended
        assert [s.status for s in ended.steps] == ["succeeded", "succeeded"]
        group = await two.await_group(group=flow.flow_id, timeout_s=1)
        assert group.complete and len(group.done) == 2
