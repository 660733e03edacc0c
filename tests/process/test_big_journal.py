"""A big journal (issue 26): what a start and `list_effects` read is indexed, the summary's counts kept by
triggers stay right, an older journal migrates, and a start recovers exactly the leftovers of a long history.

The journals are made by `benchmarks/make_journal.py` (the real engine's rows, copied), a few thousand
effects: the query plans, not timings, are what is checked."""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from benchmarks.make_journal import generate
from effectd.config.settings import build_settings
from effectd.engine.core import Engine
from effectd.harness.usage import MAX_RUN_COST_USD, MAX_RUN_TOKENS
from effectd.journal import migrations, usable
from effectd.journal.approvals import approval_events
from effectd.journal.store import Journal, replay_projection
from effectd.journal.summaries import summarize_effects
from effectd.model.arguments import EffectRequest
from effectd.runner.contain import leftover_ids
from effectd.runner.local import LocalRunner
from tests.helpers.processes import SLEEP, py, wait_gone

pytestmark = pytest.mark.anyio


async def make(db: Path, effects: int, *, leftovers: int = 0) -> None:
    """The generator runs the engine in its own event loop: on a thread of its own."""
    await anyio.to_thread.run_sync(partial(generate, db, effects, leftovers=leftovers))


def rows(db: Path, sql: str, *params: Any) -> list[dict[str, Any]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(sql, params)]


def _total(path: str, cast: str, bound: float) -> str:
    value = f"CAST(json_extract(result, '{path}') AS {cast})"
    return (
        f"TOTAL(CASE WHEN kind = 'harness' AND json_valid(result) AND {value} BETWEEN 0 AND {bound} THEN {value} END)"
    )


def summed(db: Path, where: str = "", *params: Any) -> dict[str, Any]:
    """The summary as it was computed before the counts: summed over every effect (the oracle)."""
    found = rows(
        db,
        f"SELECT status, COUNT(*) AS n, {_total('$.cost_usd', 'REAL', MAX_RUN_COST_USD)} AS cost, "
        f"{_total('$.usage.input_tokens', 'INTEGER', MAX_RUN_TOKENS)} AS tin, "
        f"{_total('$.usage.output_tokens', 'INTEGER', MAX_RUN_TOKENS)} AS tout FROM effects {where} GROUP BY status",
        *params,
    )
    return {
        "count": sum(r["n"] for r in found),
        "by_status": {r["status"]: r["n"] for r in found},
        "cost_usd": round(sum(r["cost"] for r in found), 6),
        "tokens": {
            "input_tokens": int(sum(r["tin"] for r in found)),
            "output_tokens": int(sum(r["tout"] for r in found)),
        },
    }


async def check_summaries(db: Path) -> None:
    group = rows(db, "SELECT MIN(group_name) AS g FROM effects")[0]["g"]
    run = rows(db, "SELECT MAX(run_id) AS r FROM effects")[0]["r"]
    async with Journal.open(db) as journal:
        assert await summarize_effects(journal, None, None, None) == summed(db)
        assert await summarize_effects(journal, run, None, None) == summed(db, "WHERE run_id = ?", run)
        assert await summarize_effects(journal, None, group, ["failed"]) == summed(
            db, "WHERE group_name = ? AND status = 'failed'", group
        )
        assert await summarize_effects(journal, run, None, ["failed", "succeeded"]) == summed(
            db, "WHERE run_id = ? AND status IN ('failed', 'succeeded')", run
        )


def plans(db: Path, queries: list[tuple[str, Any]]) -> dict[str, list[str]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return {sql: [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)] for sql, params in queries}


async def test_the_start_up_and_list_queries_read_through_indexes_not_the_history(tmp_path):
    db = tmp_path / "big.db"
    await make(db, 3000, leftovers=2)
    group = rows(db, "SELECT MIN(group_name) AS g FROM effects")[0]["g"]
    run = rows(db, "SELECT MIN(run_id) AS r FROM effects")[0]["r"]
    asked: list[tuple[str, Any]] = []
    async with Journal.open(db) as journal:
        fetch = journal.fetch

        async def recording(sql: str, params: Any = ()) -> list[dict[str, Any]]:
            asked.append((sql, params))
            return await fetch(sql, params)

        journal.fetch = recording  # type: ignore[method-assign]
        assert len(await journal.active_effects()) == 2
        await journal.known_effect_ids(["eff_unknown"], {""})
        for filters in [(None, None, None), (None, None, ["running"]), (None, None, ["failed", "running"])]:
            await journal.list_effects(*filters, 100)
        await journal.list_effects(None, group, ["failed"], 100)
        await journal.list_effects(run, None, ["failed"], 100)
        await journal.list_effects(None, group, None, 100)
        await summarize_effects(journal, None, None, None)
        await summarize_effects(journal, None, group, ["failed"])
        await journal.active_flows()
        await approval_events(journal)
    for sql, plan in plans(db, asked).items():
        assert not any(line in ("SCAN effects", "SCAN events", "SCAN flows") for line in plan), (sql, plan)
        assert not any("TEMP B-TREE FOR ORDER BY" in line for line in plan), (sql, plan)
        if "effect_counts" in sql:
            assert all("effect_counts" in line or "GROUP BY" in line for line in plan), (sql, plan)
        elif "WHERE" not in sql:  # the newest page: the primary key, walked back until the limit
            assert plan == ["SCAN effects USING INDEX sqlite_autoindex_effects_1"], (sql, plan)
        else:
            indexed = ("SEARCH", "SCAN effects USING INDEX effects_live", "SCAN flows USING INDEX flows_unfinished")
            indexed += ("SCAN events USING INDEX events_approvals",)
            assert any(line.startswith(indexed) for line in plan), (sql, plan)


async def test_the_counts_stay_right_through_inserts_updates_and_prunes(tmp_path):
    db = tmp_path / "big.db"
    await make(db, 1200)
    async with Journal.open(db):  # migrated
        pass
    await check_summaries(db)
    harness = {"cost_usd": 0.25, "usage": {"input_tokens": 10, "output_tokens": 3}}
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE effects SET kind = 'harness', result = ? WHERE effect_id IN "
            "(SELECT effect_id FROM effects ORDER BY effect_id LIMIT 40)",
            (json.dumps(harness),),
        )
        conn.execute(
            "UPDATE effects SET status = 'cancelled' WHERE effect_id IN (SELECT effect_id FROM effects LIMIT 7)"
        )
        conn.execute(
            "UPDATE effects SET group_name = 'moved' WHERE effect_id IN (SELECT effect_id FROM effects LIMIT 5)"
        )
        conn.execute("UPDATE effects SET result = 'not json' WHERE effect_id = (SELECT MIN(effect_id) FROM effects)")
        # as `effectd prune` forgets effects
        conn.execute(
            "DELETE FROM effects WHERE effect_id IN (SELECT effect_id FROM effects ORDER BY effect_id DESC LIMIT 300)"
        )
    await check_summaries(db)
    settings = replace(build_settings({}, db=db, allow_any_command=True), default_grace_s=0.5, result_grace_s=0.5)
    async with Engine.open(settings) as engine:  # the engine's own upserts, in a new run and a group
        for code in ("pass", "raise SystemExit(3)"):
            dispatched = await engine.dispatch(EffectRequest.model_validate({"command": py(code), "group": "new"}))
            await engine.follow(dispatched.record.effect_id, 30)
        listed = await engine.list_effects(group="new")
        assert listed.summary is not None and listed.summary["by_status"] == {"failed": 1, "succeeded": 1}
    await check_summaries(db)
    assert summed(db, "WHERE group_name = 'new'")["count"] == 2


async def test_a_journal_from_before_the_counts_migrates_and_keeps_its_figures(tmp_path):
    db = tmp_path / "older.db"
    await make(db, 1500, leftovers=1)
    with sqlite3.connect(db) as conn:  # the schema as an effectd before m260 left it
        conn.executescript(
            """
            DROP TRIGGER effect_counts_insert; DROP TRIGGER effect_counts_update; DROP TRIGGER effect_counts_delete;
            DROP TABLE effect_counts; DROP INDEX effects_live; DROP INDEX flows_unfinished;
            DROP INDEX events_approvals; DROP INDEX effects_by_status;
            CREATE INDEX effects_by_status ON effects (status);
            DELETE FROM _migrations WHERE name = 'm260_issue26_scale';
            DELETE FROM sqlite_stat1;
            """
        )
    assert [name for name, _ in migrations.MIGRATIONS][-1] == "m260_issue26_scale"
    before = rows(db, "SELECT * FROM effects ORDER BY effect_id")
    await check_summaries(db)  # the first open migrates it
    names = {r["name"] for r in rows(db, "SELECT name FROM sqlite_master")}
    assert {"effect_counts", "effects_live", "effects_by_status", "flows_unfinished"} <= names
    assert "m260_issue26_scale" in {r["name"] for r in rows(db, "SELECT name FROM _migrations")}
    assert rows(db, "SELECT * FROM effects ORDER BY effect_id") == before  # nothing an effect holds changed
    assert (await replay_projection(db))["effects"] == before


async def test_a_start_on_a_long_history_ends_exactly_its_leftovers_and_kills_what_they_left(tmp_path, monkeypatch):
    db = tmp_path / "big.db"
    await make(db, 2000, leftovers=3)
    finished = rows(db, "SELECT effect_id FROM effects WHERE status = 'succeeded' LIMIT 1")[0]["effect_id"]
    # What a finished effect's daemon left, in a session of its own, carrying its marker: killed at start.
    daemon = await anyio.open_process(
        py(SLEEP, "60"), env={**os.environ, "EFFECTD_EFFECT_ID": finished}, start_new_session=True
    )
    try:
        with anyio.fail_after(10):
            while finished not in leftover_ids(None):  # noqa: ASYNC110 - the child's environ is there once it runs
                await anyio.sleep(0.02)
        asked: list[list[str]] = []
        kill = LocalRunner.kill_leftovers

        async def recording(self: LocalRunner, processes: Any) -> None:
            asked.append(sorted(p.effect_id for p in processes))
            await kill(self, processes)

        monkeypatch.setattr(LocalRunner, "kill_leftovers", recording)
        before = rows(db, "SELECT status, COUNT(*) AS n FROM effects GROUP BY status")
        events = rows(db, "SELECT COUNT(*) AS n FROM events")[0]["n"]
        leftovers = [r["effect_id"] for r in rows(db, "SELECT effect_id FROM effects WHERE status = 'running'")]
        settings = replace(build_settings({}, db=db, allow_any_command=True), default_grace_s=0.5)
        async with Engine.open(settings):
            pass
        await wait_gone([daemon.pid])
    finally:
        if daemon.returncode is None:
            daemon.kill()
        await daemon.wait()
    assert asked == [sorted([*leftovers, finished])]  # the leaders and the daemon's effect, not the history
    after = {r["effect_id"]: r for r in rows(db, "SELECT * FROM effects WHERE effect_id IN (?, ?, ?)", *leftovers)}
    assert all(r["status"] == "failed" and r["error"] == "interrupted" for r in after.values())
    assert rows(db, "SELECT COUNT(*) AS n FROM events")[0]["n"] == events + 3
    counts = {r["status"]: r["n"] for r in rows(db, "SELECT status, COUNT(*) AS n FROM effects GROUP BY status")}
    expected = {r["status"]: r["n"] for r in before if r["status"] != "running"}
    assert counts == {**expected, "failed": expected["failed"] + 3}


async def test_a_journal_checked_once_is_not_quick_checked_again_until_its_files_change(tmp_path, monkeypatch):
    db = tmp_path / "journal.db"
    await make(db, 100)
    checks: list[str] = []
    quick_check = usable._quick_check

    def counting(uri: str, bound: float) -> tuple[str] | None:
        checks.append(uri)
        return quick_check(uri, bound)

    monkeypatch.setattr(usable, "_quick_check", counting)
    usable.check_journal(db)
    usable.check_journal(db)  # as `effectd serve` does, then its engine
    assert len(checks) == 1
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE runs SET created_at = created_at || 'Z'")
    usable.check_journal(db)
    assert len(checks) == 2
