"""Journal faults, done for real: a full disk (a small tmpfs), a database locked by another program
past the busy timeout. The server stays up, calls that need to write are refused naming the cause,
effects that end meanwhile keep their true outcome, and `seq` stays gap-free."""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from effectd.config.settings import Settings
from effectd.engine.core import Engine
from effectd.errors import JournalUnavailableError
from effectd.journal.projection import Event
from effectd.journal.store import Journal, replay_projection
from effectd.journal.writer import Retry
from tests.helpers.disks import mount_tmpfs, unmount
from tests.helpers.mcp import call, call_error, connected, wait_until
from tests.helpers.processes import pid_alive, py

pytestmark = pytest.mark.anyio

# Waits until the gate file exists, then exits with the code given.
GATED = "import os, sys, time\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.02)\nsys.exit(int(sys.argv[2]))"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB file system of its own, unmounted after the test."""
    disk = tmp_path / "disk"
    mount_tmpfs(disk, "2m")
    try:
        yield disk
    finally:
        unmount(disk)


def fill(disk: Path) -> Path:
    """Fills the disk to its last page; returns the filler file (delete it to free the space)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 4096, 512):
            while True:
                try:
                    if os.write(fd, b"\0" * size) < size:
                        break
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return filler


def journal_events(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute("SELECT seq, effect_id, type, data FROM events ORDER BY seq")]


def assert_sound(db: Path) -> list[dict[str, Any]]:
    """`seq` runs 1..n without a gap, every effect has exactly one terminal event, none of them
    `interrupted` or an internal error; returns the events."""
    events = journal_events(db)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), "seq has a gap"
    terminal: dict[str, int] = {}
    for event in events:
        if event["type"] in ("EFFECT_SUCCEEDED", "EFFECT_FAILED", "EFFECT_CANCELLED", "EFFECT_SKIPPED"):
            terminal[event["effect_id"]] = terminal.get(event["effect_id"], 0) + 1
            assert "interrupted" not in event["data"] and "internal error" not in event["data"], event
    assert all(n == 1 for n in terminal.values()), terminal
    return events


async def gated_pair(client: Client, gate: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two running effects that end when `gate` exists: one succeeds, one exits 3."""
    ok, bad = [
        await call(client, "dispatch_effect", command=py(GATED, str(gate), code), group="pair", background=True)
        for code in ("0", "3")
    ]
    with anyio.fail_after(20):
        while True:
            records = [await call(client, "poll_effect", effect_id=e["effect_id"]) for e in (ok, bad)]
            if all(r["status"] == "running" and r["pid"] for r in records):
                return records[0], records[1]
            await anyio.sleep(0.02)


async def end_while_held(engine: Engine, gate: Path, *records: dict[str, Any], held: int) -> None:
    """Opens the gate and waits until the effects' processes are gone and the journal holds their ends."""
    await anyio.Path(gate).touch()
    await wait_until(lambda: not any(pid_alive(r["pid"]) for r in records), 20)
    await wait_until(lambda: engine.stats()["journal_events_held_back"] >= held, 20)


async def until_ended(client: Client, *records: dict[str, Any]) -> None:
    """Waits (up to 20 s) until every effect is terminal."""
    ids = [r["effect_id"] for r in records]
    done = await call(client, "await_group", effect_ids=ids, timeout_s=20)
    assert done["complete"], done


def fault_settings(settings: Settings, db: Path) -> Settings:
    return replace(settings, db=db, journal_busy_timeout_s=0.2, journal_retry_max_s=0.1)


async def test_effects_that_end_while_the_disk_is_full_keep_their_true_outcome_once_space_is_freed(
    settings: Settings, small_disk: Path, tmp_path: Path
) -> None:
    db = small_disk / "journal.db"
    gate = tmp_path / "gate"
    async with connected(fault_settings(settings, db)) as (engine, client):
        before = len(journal_events(db))
        filler = fill(small_disk)
        # Nothing is held back: the dispatch tries, and the full disk refuses it.
        refused = await call_error(client, "dispatch_effect", command=py("pass"), background=True)
        assert "journal unavailable: disk full" in refused and str(db) in refused
        filler.unlink()
        assert len(journal_events(db)) == before  # nothing of the refused dispatch was written

        ok, bad = await gated_pair(client, gate)
        filler = fill(small_disk)
        await end_while_held(engine, gate, ok, bad, held=2)

        # The server stays up; what needs to write is refused at once, naming the cause; reads answer.
        with anyio.fail_after(2):
            refused = await call_error(client, "dispatch_effect", command=py("pass"), background=True)
            assert "journal unavailable: disk full" in refused
            refused = await call_error(client, "cancel_effect", effect_id=ok["effect_id"])
            assert "journal unavailable: disk full" in refused
            listed = await call(client, "list_effects")
            assert {e["effect_id"] for e in listed["effects"]} >= {ok["effect_id"], bad["effect_id"]}
        held = await call(client, "poll_effect", effect_id=ok["effect_id"])
        assert held["status"] == "running"  # the record shows what is durable; the end waits in memory

        filler.unlink()
        await until_ended(client, ok, bad)
        done_ok = await call(client, "poll_effect", effect_id=ok["effect_id"])
        done_bad = await call(client, "poll_effect", effect_id=bad["effect_id"])
        assert (done_ok["status"], done_ok["exit_code"], done_ok["error"]) == ("succeeded", 0, None)
        assert (done_bad["status"], done_bad["exit_code"], done_bad["error"]) == ("failed", 3, "exited with code 3")
        after = await call(client, "dispatch_effect", command=py("pass"), wait_s=20)
        assert after["status"] == "succeeded"  # the journal takes writes again
    assert_sound(db)
    replayed = await replay_projection(db)
    by_id = {row["effect_id"]: row for row in replayed["effects"]}
    assert by_id[ok["effect_id"]]["status"] == "succeeded" and by_id[bad["effect_id"]]["exit_code"] == 3
    async with connected(fault_settings(settings, db)) as (_, client):  # and a restart keeps the outcomes
        again = await call(client, "poll_effect", effect_id=ok["effect_id"])
        assert (again["status"], again["exit_code"]) == ("succeeded", 0)


async def test_an_effect_that_exits_0_while_another_program_locks_the_database_is_recorded_succeeded(
    settings: Settings, tmp_path: Path
) -> None:
    db = tmp_path / "journal.db"
    gate = tmp_path / "gate"
    async with connected(fault_settings(settings, db)) as (engine, client):
        ok, bad = await gated_pair(client, gate)
        browser = sqlite3.connect(db, timeout=0.1, isolation_level=None)  # a DB browser holding a write transaction
        try:
            browser.execute("BEGIN IMMEDIATE")
            await end_while_held(engine, gate, ok, bad, held=2)
            with anyio.fail_after(2):  # refused at once, not after another busy timeout
                refused = await call_error(client, "dispatch_effect", command=py("pass"), background=True)
            assert "journal unavailable: database is locked" in refused
            steps = [{"id": "a", "command": py("pass")}, {"id": "b", "needs": ["a"], "command": py("pass")}]
            refused = await call_error(client, "dispatch_flow", steps=steps, background=True)
            assert "journal unavailable: database is locked" in refused
            refused = await call_error(client, "cancel_group", group="pair")
            assert "journal unavailable: database is locked" in refused
            # Locked many busy timeouts long: the server keeps trying, answers, and falsifies nothing.
            with anyio.fail_after(10):
                for _ in range(10):
                    await anyio.sleep(0.2)
                    assert (await call(client, "poll_effect", effect_id=ok["effect_id"]))["status"] == "running"
        finally:
            browser.execute("ROLLBACK")
            browser.close()
        await until_ended(client, ok, bad)
        record = await call(client, "poll_effect", effect_id=ok["effect_id"])
        assert (record["status"], record["exit_code"]) == ("succeeded", 0)
        assert (await call(client, "poll_effect", effect_id=bad["effect_id"]))["exit_code"] == 3
        assert (await call(client, "dispatch_effect", command=py("pass"), wait_s=20))["status"] == "succeeded"
    events = assert_sound(db)
    assert sum(e["type"] == "EFFECT_REQUESTED" for e in events) == 3  # the refused dispatch wrote nothing


async def test_a_dispatch_the_locked_database_refuses_leaves_no_gap_in_seq(settings: Settings, tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    async with connected(fault_settings(settings, db)) as (_, client):
        first = await call(client, "dispatch_effect", command=py("pass"), wait_s=20)
        browser = sqlite3.connect(db, timeout=0.1, isolation_level=None)
        try:
            browser.execute("BEGIN IMMEDIATE")
            for _ in range(3):
                refused = await call_error(client, "dispatch_effect", command=py("pass"), background=True)
                assert "journal unavailable: database is locked" in refused
        finally:
            browser.execute("ROLLBACK")
            browser.close()
        second = await call(client, "dispatch_effect", command=py("pass"), wait_s=20)
        assert (first["status"], second["status"]) == ("succeeded", "succeeded")
    events = assert_sound(db)
    assert sum(e["type"] == "EFFECT_REQUESTED" for e in events) == 2


async def test_a_server_stopped_while_the_disk_is_full_exits_without_hanging(
    settings: Settings, small_disk: Path, tmp_path: Path
) -> None:
    db = small_disk / "journal.db"
    gate = tmp_path / "gate"
    with anyio.fail_after(30):
        async with connected(fault_settings(settings, db)) as (engine, client):
            ok, bad = await gated_pair(client, gate)
            fill(small_disk)
            await end_while_held(engine, gate, ok, bad, held=2)
            closing_at = anyio.current_time()
        assert anyio.current_time() - closing_at < 15  # it gave the journal its last chance, then stopped


async def test_appends_held_through_a_lock_commit_in_order_once_it_is_released_and_hold_up_new_starts(
    tmp_path: Path,
) -> None:
    db = tmp_path / "journal.db"

    def run_created(n: int) -> Event:
        return Event("RUN_CREATED", f"run_{n}", None, {"created_at": "2026-01-01T00:00:00Z"})

    async with Journal.open(db, busy_timeout_s=0.05, retry=Retry(first_s=0.01, max_s=0.05)) as journal:
        (first,) = await journal.append(run_created(1))
        browser = sqlite3.connect(db, timeout=0.1, isolation_level=None)
        browser.execute("BEGIN IMMEDIATE")
        committed: list[Event] = []
        clear = anyio.Event()

        async def append(n: int) -> None:
            committed.extend(await journal.append(run_created(n)))

        async def starter() -> None:
            await journal.wait_clear()  # what the supervisor awaits before it starts a process
            clear.set()

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(append, 2)
                await wait_until(lambda: journal.held_back == 1)
                tg.start_soon(append, 3)
                tg.start_soon(starter)
                with pytest.raises(JournalUnavailableError, match="journal unavailable: database is locked"):
                    await journal.try_append(run_created(4))
                await anyio.sleep(0.3)  # many retries
                assert not committed and not clear.is_set()
                browser.execute("ROLLBACK")
        finally:
            browser.close()
        assert clear.is_set() and journal.held_back == 0
        assert [(e.run_id, e.seq) for e in [first, *committed]] == [("run_1", 1), ("run_2", 2), ("run_3", 3)]
        (after,) = await journal.try_append(run_created(5))
        assert after.seq == 4  # the refused append used no number
    assert [e["seq"] for e in journal_events(db)] == [1, 2, 3, 4]
