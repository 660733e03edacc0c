"""The journal: migrations, group commit, replay, exactly one terminal event per effect."""

from __future__ import annotations

import json
import sqlite3

import anyio
import pytest

from effectd.journal.migrations import MIGRATIONS
from effectd.journal.store import Journal, replay_projection
from tests.helpers.mcp import call, connected
from tests.helpers.processes import SLEEP, py

pytestmark = pytest.mark.anyio


def rows(db, sql, *params):
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(sql, params)]


async def test_migrating_a_blank_database_creates_every_table_once(tmp_path):
    db = tmp_path / "blank.db"
    async with Journal.open(db):
        pass
    async with Journal.open(db):  # a second open applies nothing again
        pass
    tables = {r["name"] for r in rows(db, "select name from sqlite_master where type = 'table'")}
    assert {"events", "effects", "runs", "flows", "control", "_migrations"} <= tables
    assert [r["name"] for r in rows(db, "select name from _migrations")] == [name for name, _ in MIGRATIONS]
    assert rows(db, "pragma journal_mode")[0]["journal_mode"] == "wal"


async def test_a_burst_of_dispatches_is_committed_in_few_transactions(settings):
    async with connected(settings) as (engine, client):
        before = engine.stats()["journal_transactions"]
        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(lambda: call(client, "dispatch_effect", command=py("pass"), background=True, group="b"))
        await call(client, "await_group", group="b", timeout_s=50)
        batches = engine.stats()["journal_transactions"] - before
    events = rows(settings.db, "select count(*) as n from events")[0]["n"]
    assert events >= 300  # requested, started, resolved for each
    assert batches < events / 2, f"{events} events took {batches} transactions"


async def test_replaying_the_events_rebuilds_the_projection_exactly(settings):
    async with connected(settings, max_concurrency=2) as (_, client):
        ok = await call(client, "dispatch_effect", command=py("print('ok')"), run_id="r", group="g", key="k")
        await call(client, "dispatch_effect", command=py("raise SystemExit(2)"), run_id="r")
        slow = await call(client, "dispatch_effect", command=py(SLEEP, "30"), background=True, run_id="r")
        after = await call(
            client, "dispatch_effect", command=py("pass"), background=True, depends_on=[slow["effect_id"]]
        )
        await call(client, "cancel_effect", effect_id=slow["effect_id"], reason="stop", grace_s=0.1)
        await call(client, "await_group", effect_ids=[after["effect_id"], ok["effect_id"]], timeout_s=10)
        await call(client, "dispatch_effect", command=py("pass"), max_attempts=2)
    replayed = await replay_projection(settings.db)
    assert replayed["effects"] == rows(settings.db, "select * from effects order by effect_id")
    assert replayed["runs"] == rows(settings.db, "select * from runs order by run_id")
    assert replayed["flows"] == rows(settings.db, "select * from flows order by flow_id")
    assert len(replayed["effects"]) == 5


async def test_every_effect_ends_with_exactly_one_terminal_event(settings):
    async with connected(settings) as (_, client):
        await call(client, "dispatch_effect", command=py("pass"))
        await call(client, "dispatch_effect", command=py("raise SystemExit(1)"))
        slow = await call(client, "dispatch_effect", command=py(SLEEP, "30"), background=True)
        await call(client, "dispatch_effect", command=py("pass"), background=True, depends_on=[slow["effect_id"]])
        await call(client, "cancel_effect", effect_id=slow["effect_id"], grace_s=0.1)
        await call(client, "dispatch_effect", command=py(SLEEP, "30"), background=True)  # cancelled by shutdown
    counts = rows(
        settings.db,
        "select e.effect_id, count(v.seq) as n from effects e left join events v on v.effect_id = e.effect_id "
        "and v.type in ('EFFECT_RESOLVED', 'EFFECT_FAILED', 'EFFECT_CANCELLED', 'EFFECT_SKIPPED') group by e.effect_id",
    )
    assert len(counts) == 5 and all(c["n"] == 1 for c in counts), counts
    reasons = [
        r["cancel_reason"] for r in rows(settings.db, "select cancel_reason from effects where status = 'cancelled'")
    ]
    assert sorted(reasons) == ["shutdown", "user"]


async def test_a_rejected_call_writes_nothing(settings):
    async with connected(settings) as (_, client):
        result = await client.call_tool("dispatch_effect", {"command": py("pass"), "run_id": "nothing", "timout_s": 1})
        assert result.is_error
    assert rows(settings.db, "select count(*) as n from events")[0]["n"] == 0


async def test_an_older_journals_commands_fold_to_null_and_still_read_as_the_argv_that_ran(settings, tmp_path):
    async with connected(settings) as (_, client):
        ran = await call(client, "dispatch_effect", command=py("print('x' * 10)"))
    with sqlite3.connect(settings.db) as conn:  # as an effectd before m240 stored it: the argv again
        conn.execute("update effects set command = json_extract(spec, '$.command')")
        conn.execute("delete from _migrations where name = 'm240_issue24_command_null'")
    async with connected(settings) as (_, client):
        again = await call(client, "poll_effect", effect_id=ran["effect_id"])
    assert again["command"] == ran["command"] == py("print('x' * 10)")
    assert rows(settings.db, "select command from effects")[0]["command"] == "null"


async def test_a_spec_is_journaled_without_its_defaults_and_its_record_comes_back_whole(settings):
    async with connected(settings) as (_, client):
        live = await call(client, "dispatch_effect", command=py("pass"), group="g", max_attempts=2)
    (requested,) = rows(settings.db, "select data from events where type = 'EFFECT_REQUESTED'")
    spec = json.loads(requested["data"])["spec"]
    assert set(spec) == {"kind", "command", "group", "max_attempts", "grace_s"}  # grace_s: the settings' 0.5
    assert json.loads(rows(settings.db, "select spec from effects")[0]["spec"]) == spec
    async with connected(settings) as (_, client):  # a new server reads the record back from the row alone
        again = await call(client, "poll_effect", effect_id=live["effect_id"])
    assert again == live
