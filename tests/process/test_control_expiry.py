"""A control request (`effectd cancel`) is carried out only within its window: once the command has said
that no server answered, no server, this one or one started later, carries the cancel out."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from effectd.journal.reader import JournalReader
from effectd.runner.procfs import process_start_time
from tests.helpers.mcp import call, connected, read_until, wait_until
from tests.helpers.processes import SLEEP, effectd_bin, py

pytestmark = pytest.mark.anyio

RUN_A_SECOND = "import time; time.sleep(1); print('ran')"


async def queued_effect(settings, command: list[str] | None = None) -> dict:
    """A journal holding one queued effect and no live server. Unless told, the effect runs for a second
    and prints `ran`: long enough for a server's control channel to cancel it if it took the request."""
    async with connected(settings, max_concurrency=1, keep_queued=True) as (_, client):
        # Running when the server stops (so it ends `shutdown`, not queued ahead of the one under test).
        first = await call(
            client, "dispatch_effect", command=py("print('up', flush=True)\n" + SLEEP, "60"), background=True
        )
        await read_until(client, first["effect_id"], "up")
        queued = await call(client, "dispatch_effect", command=command or py(RUN_A_SECOND), background=True)
    assert queued["status"] == "queued"
    return queued


@asynccontextmanager
async def hung_owner(db: Path, effect_id: str) -> AsyncIterator[None]:
    """Makes the server that dispatched `effect_id` look alive (its row names a live process started at
    the recorded time) while it never answers a control request, as a hung server would."""
    async with await anyio.open_process(["sleep", "60"]) as stand_in:
        with sqlite3.connect(db) as conn:
            (owner,) = conn.execute("SELECT owner FROM effects WHERE effect_id = ?", (effect_id,)).fetchone()
            conn.execute(
                "UPDATE servers SET pid = ?, pid_start = ?, host = ?, stopped_at = NULL WHERE server_id = ?",
                (stand_in.pid, process_start_time(stand_in.pid), socket.gethostname(), owner),
            )
        try:
            yield
        finally:
            stand_in.kill()
            with sqlite3.connect(db) as conn:  # gone again: the next server takes its effects over
                conn.execute("UPDATE servers SET stopped_at = datetime('now') WHERE server_id = ?", (owner,))


def control_rows(db: Path) -> list[tuple[str, str | None]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT action, answer FROM control ORDER BY id").fetchall()


async def run_effectd(*args: str) -> tuple[int, str, str]:
    with anyio.fail_after(60):
        done = await anyio.run_process([effectd_bin(), *args], env=dict(os.environ), check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_a_cancel_that_no_server_answered_in_time_is_never_carried_out_later(settings):
    queued = await queued_effect(settings)
    db = settings.db
    # The effect's server still runs but does not answer (hung): the command waits out its window.
    async with hung_owner(db, queued["effect_id"]):
        code, out, err = await run_effectd("cancel", queued["effect_id"], "--db", str(db), "--wait", "0.5")
    assert code == 2 and out == ""
    assert "no live server answered within 0.5 s; the request expired and will not be carried out" in err
    assert control_rows(db) == [("cancel", "expired")]

    # The next server runs the effect: the command's "failed" stays true.
    async with connected(settings, max_concurrency=1) as (engine, client):
        await wait_until(lambda: engine.stats()["active_effects"] == 0, within_s=30)
        record = await call(client, "poll_effect", effect_id=queued["effect_id"])
    assert (record["status"], record["cancel_reason"]) == ("succeeded", None)
    assert "ran" in record["output_tail"]
    assert control_rows(db) == [("cancel", "expired")]


async def test_a_request_left_by_a_command_that_died_expires_with_its_window(settings):
    queued = await queued_effect(settings)
    reader = JournalReader(settings.db)
    # Written while no server ran (the command was killed before it could withdraw it).
    reader.request_control(queued["effect_id"], "cancel", "stale", window_s=0.3)
    await anyio.sleep(0.5)
    async with connected(settings, max_concurrency=1) as (engine, client):
        await wait_until(lambda: engine.stats()["active_effects"] == 0, within_s=30)
        # The control channel's first poll may come after the effect's end (a loaded machine): wait for it.
        await wait_until(lambda: control_rows(settings.db)[0][1] is not None, within_s=30)
        record = await call(client, "poll_effect", effect_id=queued["effect_id"])
    assert (record["status"], record["cancel_message"]) == ("succeeded", None)
    assert control_rows(settings.db) == [("cancel", "expired")]


async def test_a_request_within_its_window_is_carried_out_by_the_server_that_starts(settings):
    queued = await queued_effect(settings, py(SLEEP, "60"))
    reader = JournalReader(settings.db)
    request_id = reader.request_control(queued["effect_id"], "cancel", "in time", window_s=30)
    async with connected(settings, max_concurrency=1) as (engine, client):
        await wait_until(lambda: engine.stats()["active_effects"] == 0, within_s=30)
        record = await call(client, "poll_effect", effect_id=queued["effect_id"])
    assert (record["status"], record["cancel_message"]) == ("cancelled", "in time")
    assert reader.control_answer(request_id) == "accepted"
    # The command's own withdrawal comes too late and changes nothing: the answer stands.
    assert reader.expire_request(request_id) == "accepted"


async def test_the_cancel_command_against_a_live_server_still_answers_and_cancels(settings, tmp_path):
    async with connected(settings) as (_, client):
        record = await call(client, "dispatch_effect", command=py(SLEEP, "60"), background=True)
        code, out, err = await run_effectd("cancel", record["effect_id"], "--db", str(settings.db))
        assert code == 0, err
        assert json.loads(out)["status"] == "cancelled"
    assert control_rows(settings.db) == [("cancel", "accepted")]
