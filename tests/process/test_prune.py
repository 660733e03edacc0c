"""`effectd prune --older-than DURATION [--journal]`: the output logs and result files of effects that
ended before then are removed and their records say so; with `--journal` their events and rows leave
the journal and the file shrinks. Running and waiting effects are never touched. With or without a
live server."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from effectd.engine.prune import journal_bytes
from effectd.journal.reader import JournalReader
from effectd.journal.store import replay_projection
from tests.helpers.mcp import call, call_error, connected, read_until
from tests.helpers.processes import SLEEP, effectd_bin, py

pytestmark = pytest.mark.anyio

# Prints 64 KiB and writes a result file.
NOISY = (
    "import json, os, sys\n"
    "sys.stdout.write('x' * 65536 + '\\n')\n"
    "json.dump({'n': int(sys.argv[1])}, open(os.environ['EFFECTD_RESULT_FILE'], 'w'))\n"
)
BULK = "y" * 50_000  # an argument that makes each effect's events and row large


async def run_effectd(*args: str) -> tuple[int, str, str]:
    with anyio.fail_after(120):
        done = await anyio.run_process([effectd_bin(), *args], env=dict(os.environ), check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


def output_files(settings: Any, effect_id: str) -> list[str]:
    return sorted(p.name for p in settings.output_dir.glob(f"{effect_id}.*"))


def rows_and_events(db: Path, effect_id: str) -> tuple[int, int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT COUNT(*) FROM effects WHERE effect_id = ?", (effect_id,)).fetchone()[0]
        events = conn.execute("SELECT COUNT(*) FROM events WHERE effect_id = ?", (effect_id,)).fetchone()[0]
    return int(rows), int(events)


async def test_prune_without_a_server_removes_output_then_with_journal_the_records(settings):
    async with connected(settings, max_concurrency=1, keep_queued=True) as (_, client):
        ended = [
            await call(client, "dispatch_effect", command=[*py(NOISY, str(i)), BULK], label="old") for i in range(12)
        ]
        flow = await call(
            client,
            "dispatch_flow",
            steps=[{"id": "a", "command": py(NOISY, "1")}, {"id": "b", "command": py("pass"), "needs": ["a"]}],
        )
        assert flow["status"] == "succeeded"
        # One running at the stop (it ends `cancelled`, reason `shutdown`), and one still queued after it.
        sleeper = await call(
            client, "dispatch_effect", command=py("print('up', flush=True)\n" + SLEEP, "60"), background=True
        )
        await read_until(client, sleeper["effect_id"], "up")
        waiting = await call(client, "dispatch_effect", command=py(NOISY, "99"), background=True)
    assert waiting["status"] == "queued"
    assert all(r["status"] == "succeeded" and r["output_bytes"] > 65536 for r in ended)
    first = ended[0]["effect_id"]
    assert output_files(settings, first) == [f"{first}.log", f"{first}.result.json"]
    db = str(settings.db)

    # Nothing ended an hour ago: nothing is pruned.
    code, out, err = await run_effectd("prune", "--older-than", "1h", "--db", db)
    assert code == 0, err
    assert json.loads(out)["effects_pruned"] == 0 and output_files(settings, first)

    code, out, err = await run_effectd("prune", "--older-than", "0s", "--db", db)
    assert code == 0, err
    report = json.loads(out)
    assert report["effects_pruned"] == 12 + 2 + 1  # the effects, the flow's steps, the one cancelled at the stop
    assert report["files_removed"] >= 12 * 2 and report["bytes_freed"] > 12 * 65536
    assert report["active_left_alone"] == 1
    for record in ended:
        assert output_files(settings, record["effect_id"]) == []
    code, out, err = await run_effectd("show", first, "--db", db)
    shown = json.loads(out)
    assert (shown["output_bytes"], shown["output_pruned"], shown["output_tail"]) == (0, True, "")
    assert shown["result"] == {"n": 0} and shown["status"] == "succeeded"  # the outcome is kept
    reader = JournalReader(settings.db)
    assert [e["type"] for e in reader.events() if e["effect_id"] == first][-1] == "EFFECT_OUTPUT_PRUNED"
    assert (reader.effect(waiting["effect_id"]) or {})["status"] == "queued"  # the waiting one untouched

    # A second prune finds nothing new and writes nothing.
    events = reader.event_count()
    code, out, _ = await run_effectd("prune", "--older-than", "0s", "--db", db)
    assert code == 0 and json.loads(out)["effects_pruned"] == 0 and reader.event_count() == events

    size = journal_bytes(settings.db)
    code, out, err = await run_effectd("prune", "--older-than", "0s", "--journal", "--db", db)
    assert code == 0, err
    report = json.loads(out)
    assert report["effects_forgotten"] == 12 + 2 + 1 and report["flows_forgotten"] == 1
    for record in ended:
        assert rows_and_events(settings.db, record["effect_id"]) == (0, 0)
    assert reader.flow(flow["flow_id"]) is None
    assert not [e for e in reader.events() if e["type"].startswith("FLOW_")]
    assert reader.events()[-1]["type"] == "JOURNAL_PRUNED"
    assert (reader.effect(waiting["effect_id"]) or {})["status"] == "queued"
    after = journal_bytes(settings.db)
    assert after < size / 2 and report["journal_bytes_after"] == after, (size, after)
    # What is left still replays to the projection exactly.
    replayed = await replay_projection(settings.db)
    assert [r["effect_id"] for r in replayed["effects"]] == [waiting["effect_id"]]

    # The next server runs the waiting effect as if nothing happened, with a seq beyond every earlier one.
    last_seq = reader.events()[-1]["seq"]
    async with connected(settings) as (_, client):
        done = await call(client, "await_group", effect_ids=[waiting["effect_id"]], timeout_s=30)
    assert done["done"][0]["status"] == "succeeded" and done["done"][0]["output_pruned"] is False
    assert min(e["seq"] for e in reader.events(after=last_seq)) == last_seq + 1


async def test_a_live_server_prunes_when_asked_and_leaves_running_effects_alone(settings):
    async with connected(settings) as (_, client):
        ended = [await call(client, "dispatch_effect", command=[*py(NOISY, str(i)), BULK]) for i in range(6)]
        running = await call(
            client, "dispatch_effect", command=py("print('still here', flush=True); import time; time.sleep(60)"),
            background=True,
        )  # fmt: skip
        await read_until(client, running["effect_id"], "still here")
        first = ended[0]["effect_id"]
        assert (await call(client, "poll_effect", effect_id=first))["output_bytes"] > 65536  # held in memory too

        code, out, err = await run_effectd("prune", "--older-than", "0s", "--db", str(settings.db))
        assert code == 0, err
        assert json.loads(out)["effects_pruned"] == 6
        record = await call(client, "poll_effect", effect_id=first)
        assert (record["output_bytes"], record["output_pruned"], record["output_tail"]) == (0, True, "")
        chunk = await call(client, "stream_effect", effect_id=first)
        assert (chunk["data"], chunk["eof"]) == ("", True)
        live = await call(client, "poll_effect", effect_id=running["effect_id"])
        assert live["status"] == "running" and not live["output_pruned"] and "still here" in live["output_tail"]
        assert output_files(settings, running["effect_id"]) == [f"{running['effect_id']}.log"]

        size = journal_bytes(settings.db)
        code, out, err = await run_effectd("prune", "--older-than", "0s", "--journal", "--db", str(settings.db))
        assert code == 0, err
        assert json.loads(out)["effects_forgotten"] == 6
        assert "unknown effect" in await call_error(client, "poll_effect", effect_id=first)
        assert rows_and_events(settings.db, first) == (0, 0)
        assert journal_bytes(settings.db) < size
        listed = await call(client, "list_effects")
        assert [r["effect_id"] for r in listed["effects"]] == [running["effect_id"]]
        assert listed["summary"]["count"] == 1
        # The server keeps working: the running effect is still cancellable, new effects still run.
        assert (await call(client, "dispatch_effect", command=py("print('after')")))["status"] == "succeeded"
        cancelled = await call(client, "cancel_effect", effect_id=running["effect_id"])
        assert cancelled["status"] == "cancelled"


@pytest.mark.parametrize("duration", ["soon", "-1d", "3 fortnights"])
async def test_a_bad_duration_is_refused_with_exit_2(settings, duration):
    code, out, err = await run_effectd("prune", f"--older-than={duration}", "--db", str(settings.db))
    assert code == 2 and out == ""
    assert "is not a duration" in err and "30d" in err
