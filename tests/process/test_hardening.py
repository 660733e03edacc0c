"""Reliability under damage done for real: crashes, floods, retries, stalls, limits and shutdown timing.

Each test breaks something the way production would (SIGKILL, a burst of a thousand effects, a
gibibyte of output, a child that ignores SIGTERM) and then checks the guarantee that must survive it.
Figures (peak RSS, latencies, throughput) are printed and recorded with `record_property`.
"""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from mcp import Client

from effectd.config.settings import Settings, build_settings
from effectd.harness.profiles import HarnessProfile
from effectd.journal.projection import TERMINAL_EVENTS, command_of
from effectd.journal.store import replay_projection
from effectd.model.records import EffectSpec
from effectd.runner.procfs import process_start_time
from tests.helpers.mcp import call, connected, read_until
from tests.helpers.processes import SLEEP, pid_alive, py, stdio_params, wait_gone

pytestmark = pytest.mark.anyio
ANY = "--allow-any-command"
TERMINAL_TYPES = tuple(TERMINAL_EVENTS)
MIB = 1024 * 1024

# Prints who it is (its server, itself), then a numbered line every 10 ms until it is killed.
CHATTY = """
import os, time
print(f'server {os.getppid()} me {os.getpid()}', flush=True)
i = 0
while True:
    print(f'line {i}', flush=True)
    i += 1
    time.sleep(0.01)
"""
# Prints 'up', then waits (silently) until the file named by argv[1] exists, then prints 'released'.
BLOCK = """
import os, sys, time
print('up', flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.01)
print('released', flush=True)
"""


# --- helpers ----------------------------------------------------------------------------------------


def rows(db: Path, sql: str, *params: object) -> list[dict]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(sql, params)]


def events_of(db: Path, effect_id: str | None = None) -> list[dict]:
    if effect_id is None:
        found = rows(db, "select * from events order by seq")
    else:
        found = rows(db, "select * from events where effect_id = ? order by seq", effect_id)
    for event in found:
        event["data"] = json.loads(event["data"])
    return found


def when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.removesuffix("Z") + "+00:00")


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmHWM: peak resident set, VmRSS: current)."""
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert match, f"{field} not in /proc/self/status"
    return int(match.group(1))


def reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0), so the next peak is this test's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def wait_for(client: Client, effect_id: str, holds: Callable[[dict], bool], within_s: float = 10.0) -> dict:
    """Polls the record until `holds(record)`: for states no tool waits on (running, stalled, backing off)."""
    with anyio.fail_after(within_s):
        while not holds(record := await call(client, "poll_effect", effect_id=effect_id)):  # noqa: ASYNC110
            await anyio.sleep(0.02)
    return record


async def running_in(client: Client, group: str) -> list[dict]:
    return (await call(client, "list_effects", group=group, status=["running"]))["effects"]


async def wait_running(client: Client, group: str, count: int, within_s: float = 10.0) -> list[dict]:
    """Polls until at least `count` effects of `group` run (nothing signals a start to a client)."""
    with anyio.fail_after(within_s):
        while len(running := await running_in(client, group)) < count:  # noqa: ASYNC110
            await anyio.sleep(0.02)
    return running


def max_overlap(events: list[dict], effect_ids: set[str]) -> int:
    """The most of `effect_ids` ever running at once, read from the journal's order (not its clocks)."""
    running: set[str] = set()
    peak = 0
    for event in events:
        if event["effect_id"] not in effect_ids:
            continue
        if event["type"] == "EFFECT_STARTED":
            running.add(event["effect_id"])
            peak = max(peak, len(running))
        elif event["type"] in TERMINAL_TYPES or (event["type"] == "EFFECT_PROGRESS" and "retry" in event["data"]):
            running.discard(event["effect_id"])
    return peak


async def assert_journal_sound(db: Path, *, finished: bool) -> list[dict]:
    """The journal's invariants: seq 1..N without gap or repeat, one EFFECT_REQUESTED first for each
    effect, at most one terminal event (exactly one when `finished`) and nothing after it, at most one
    start per attempt, and a projection that replaying the events rebuilds exactly."""
    events = events_of(db)
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), "seq has gaps or repeats"
    by_effect: dict[str, list[dict]] = {}
    for event in events:
        if event["effect_id"] is not None:
            by_effect.setdefault(event["effect_id"], []).append(event)
    effects = {r["effect_id"]: r for r in rows(db, "select * from effects")}
    assert set(by_effect) == set(effects), "events and the effects table name different effects"
    for effect_id, own in by_effect.items():
        types = [e["type"] for e in own]
        assert types[0] == "EFFECT_REQUESTED" and types.count("EFFECT_REQUESTED") == 1, (effect_id, types)
        terminal = [t for t in types if t in TERMINAL_TYPES]
        assert len(terminal) == (1 if finished else len(terminal)) and len(terminal) <= 1, (effect_id, types)
        if terminal:
            assert types[-1] in TERMINAL_TYPES, f"{effect_id}: events after its terminal event: {types}"
        attempts = [e["data"]["attempt"] for e in own if e["type"] == "EFFECT_STARTED"]
        assert attempts == list(range(1, len(attempts) + 1)), f"{effect_id}: started attempts {attempts}"
        if finished:
            assert effects[effect_id]["status"] in ("succeeded", "failed", "cancelled", "skipped")
    replayed = await replay_projection(db)
    assert replayed["effects"] == rows(db, "select * from effects order by effect_id")
    assert replayed["runs"] == rows(db, "select * from runs order by run_id")
    return events


# --- 1. crash recovery ------------------------------------------------------------------------------


async def test_a_sigkill_in_the_middle_of_a_dispatch_burst_leaves_a_sound_journal_and_every_effect_answers(
    tmp_path,
):
    """kill -9 while effects are pending, queued, running and being dispatched: nothing torn, nothing
    doubled, nothing started twice; the restart ends or runs every effect and all output is readable."""
    db = tmp_path / "j.db"
    accepted: list[str] = []
    seen_before: dict[str, str] = {}
    killed = False
    try:
        async with Client(stdio_params(db, ANY, "--max-concurrency", "4"), read_timeout_seconds=70) as client:
            chatty = [
                (await call(client, "dispatch_effect", command=py(CHATTY), background=True, group="crash"))["effect_id"]
                for _ in range(2)
            ]
            server_pid = int((await read_until(client, chatty[0], "line 3")).split()[1])
            blocked = await call(client, "dispatch_effect", command=py("pass"), background=True, depends_on=[chatty[0]])
            accepted.extend([*chatty, blocked["effect_id"]])
            for effect_id in chatty:
                seen_before[effect_id] = await read_until(client, effect_id, "line 1")

            async def dispatch_one() -> None:
                with suppress(Exception):
                    record = await call(
                        client, "dispatch_effect", command=["/bin/true"], background=True, group="crash"
                    )
                    accepted.append(record["effect_id"])

            async with anyio.create_task_group() as tg:
                for _ in range(80):
                    tg.start_soon(dispatch_one)
                with anyio.fail_after(30):  # kill mid-burst: calls in flight, effects starting and ending
                    while len(accepted) < 3 + 25 or finished(db) < 5:  # noqa: ASYNC110 - no event for this
                        await anyio.sleep(0.001)
                os.kill(server_pid, signal.SIGKILL)
                killed = True
                await wait_gone([server_pid])
                tg.cancel_scope.cancel()
    except (Exception, BaseExceptionGroup):
        if not killed:
            raise  # the client only fails for good reason once its server was killed
    children = [int(text.split()[3]) for text in seen_before.values()]
    await wait_gone(children)  # the parent-death signal took the running effects with the server

    # The crashed journal itself: whole transactions only, a projection equal to its replay.
    crashed = await assert_journal_sound(db, finished=False)
    at_crash = {r["effect_id"]: r["status"] for r in rows(db, "select effect_id, status from effects")}
    assert set(accepted) <= set(at_crash), "an accepted dispatch is missing from the journal"
    assert {at_crash[i] for i in chatty} == {"running"}
    assert at_crash[blocked["effect_id"]] == "pending"
    assert "queued" in at_crash.values(), f"no effect was queued at the crash: {Counter(at_crash.values())}"
    started_at_crash = Counter(e["effect_id"] for e in crashed if e["type"] == "EFFECT_STARTED")

    settings = replace(stdio_settings(db), max_concurrency=8)
    async with connected(settings) as (_, client):
        everything = sorted(at_crash)
        outcome = await call(client, "await_group", effect_ids=everything, timeout_s=50)
        assert outcome["complete"], outcome["pending"]
        polled = {i: await call(client, "poll_effect", effect_id=i) for i in everything}
        after = {}
        for effect_id in chatty:
            chunk = await call(client, "stream_effect", effect_id=effect_id, max_bytes=1024 * 1024)
            assert chunk["eof"] is True
            after[effect_id] = chunk["data"]
    for effect_id, status in at_crash.items():
        record = polled[effect_id]
        if status == "running":
            assert (record["status"], record["error"]) == ("failed", "interrupted"), record
        elif status == "queued":
            assert record["status"] == "succeeded", record
        elif status == "pending":
            assert record["status"] == "skipped", record
    for effect_id in chatty:
        assert after[effect_id].startswith(seen_before[effect_id]), "output read before the crash was lost"
    events = await assert_journal_sound(db, finished=True)
    started = Counter(e["effect_id"] for e in events if e["type"] == "EFFECT_STARTED")
    for effect_id, status in at_crash.items():
        expected = {"queued": 1, "pending": 0}.get(status, started_at_crash[effect_id])
        assert started[effect_id] == expected, f"{effect_id} ({status} at the crash) started {started[effect_id]} times"
    print(f"\ncrash: {len(at_crash)} effects at the kill: {dict(Counter(at_crash.values()))}")


def finished(db: Path) -> int:
    return rows(db, "select count(*) as n from effects where status = 'succeeded'")[0]["n"] if db.exists() else 0


def stdio_settings(db: Path) -> Settings:
    """The settings a bare `effectd serve --db DB --allow-any-command` would use, in process."""
    return replace(build_settings({}, db=db, allow_any_command=True), default_grace_s=0.5, poll_control_s=0.05)


async def test_a_restart_does_not_kill_an_unrelated_process_that_reuses_a_recorded_pid(tmp_path):
    """Recovery kills a leftover only when pid *and* start time match (or it carries the effect's id in
    its environment): a process that merely has a recorded pid survives. The control case, whose pid
    and start time both match, is killed."""
    db = tmp_path / "j.db"
    killed = False
    try:
        async with Client(stdio_params(db, ANY), read_timeout_seconds=70) as client:
            ids = [
                (await call(client, "dispatch_effect", command=py(CHATTY), background=True))["effect_id"] for _ in "abc"
            ]
            texts = [await read_until(client, effect_id, "line 1") for effect_id in ids]
            server_pid = int(texts[0].split()[1])
            os.kill(server_pid, signal.SIGKILL)
            killed = True
            await wait_gone([server_pid, *(int(t.split()[3]) for t in texts)])
    except (Exception, BaseExceptionGroup):
        if not killed:
            raise
    decoys = [
        await anyio.open_process([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
        for _ in ids
    ]
    try:
        starts = [process_start_time(d.pid) for d in decoys]
        assert None not in starts
        # The pids now belong to unrelated processes: one record has the wrong start time, one has
        # none at all, and the control has the right one (so it names that very process).
        forged = list(zip(ids, [d.pid for d in decoys], [starts[0] + 12345, None, starts[2]], strict=True))
        with sqlite3.connect(db) as conn:
            for effect_id, pid, start in forged:
                conn.execute("update effects set pid = ?, pid_start = ? where effect_id = ?", (pid, start, effect_id))
                conn.execute(
                    "update events set data = json_set(data, '$.pid', ?, '$.pid_start', ?) "
                    "where effect_id = ? and type = 'EFFECT_STARTED'",
                    (pid, start, effect_id),
                )
        async with connected(stdio_settings(db)) as (_, client):
            records = [await call(client, "poll_effect", effect_id=effect_id) for effect_id in ids]
            await wait_gone([decoys[2].pid])
        assert [(r["status"], r["error"]) for r in records] == [("failed", "interrupted")] * 3
        assert pid_alive(decoys[0].pid), "the restart killed a process whose start time did not match"
        assert pid_alive(decoys[1].pid), "the restart killed a process by pid alone"
    finally:
        for decoy in decoys:
            with suppress(ProcessLookupError):
                decoy.kill()
            await decoy.aclose()


# --- 2. floods --------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_burst_of_a_thousand_effects_all_finish_while_polls_stay_fast_and_memory_stays_bounded(
    settings, record_property
):
    # What earlier tests left in memory is frozen out of the collector, so a full collection of their
    # garbage does not land inside a measured poll (the figures are effectd's work, not theirs).
    gc.collect()
    gc.freeze()
    reset = reset_peak_rss()
    rss_before, peak_before = status_kib("VmRSS"), status_kib("VmHWM")
    latencies: list[float] = []
    busy: list[float] = []
    lags: list[float] = []
    ids: list[str] = []
    accepted_at: float | None = None
    flood_over = anyio.Event()
    async with connected(settings, max_concurrency=32) as (engine, client), anyio.create_task_group() as watch:

        async def heartbeat() -> None:  # how late a 1 ms sleep wakes: how long the event loop was blocked
            while not flood_over.is_set():
                asked = time.monotonic()
                await anyio.sleep(0.001)
                if accepted_at is not None:  # the client's own work during the burst shares this loop
                    lags.append(time.monotonic() - asked - 0.001)

        watch.start_soon(heartbeat)
        began = time.monotonic()

        async def dispatch_one() -> None:
            record = await call(client, "dispatch_effect", command=["/bin/true"], background=True, group="flood")
            ids.append(record["effect_id"])

        async with anyio.create_task_group() as tg:
            for _ in range(1000):
                tg.start_soon(dispatch_one)
        accepted_at = time.monotonic()
        accepted = accepted_at - began
        # Measured after every dispatch was accepted, while effects are still running.
        # The event loop's own CPU time per poll (thread_time: this thread runs both client and server)
        # is the work queued in front of the answer; wall time adds whatever other processes took.
        while engine.stats()["active_effects"] > 32 and len(latencies) < 20:
            asked, cpu = time.monotonic(), time.thread_time()
            await call(client, "poll_effect", effect_id=ids[len(latencies) * 37 % len(ids)])
            latencies.append(time.monotonic() - asked)
            busy.append(time.thread_time() - cpu)
            await anyio.sleep(0.005)
        with anyio.fail_after(55):
            while engine.stats()["active_effects"]:  # noqa: ASYNC110 - watched without a tool call, see below
                await anyio.sleep(0.01)
        took = time.monotonic() - began
        flood_over.set()
        asked = time.monotonic()
        outcome = await call(client, "await_group", group="flood", timeout_s=55)  # 1000 records in one answer
        await_s = time.monotonic() - asked
    peak = status_kib("VmHWM")
    statuses = Counter(r["status"] for r in outcome["done"])
    figures = {
        "effects": len(ids),
        "accept_s": round(accepted, 3),
        "all_done_s": round(took, 3),
        "per_s": round(len(ids) / took, 1),
        "poll_samples": len(latencies),
        "poll_max_ms": round(max(latencies, default=0) * 1000, 2),
        "poll_median_ms": round(sorted(latencies)[len(latencies) // 2] * 1000, 2) if latencies else None,
        "poll_loop_cpu_max_ms": round(max(busy, default=0) * 1000, 2),
        "await_group_1000_ms": round(await_s * 1000, 1),
        "loop_lag_max_ms": round(max(lags) * 1000, 1),
        "loop_lag_p99_ms": round(sorted(lags)[int(len(lags) * 0.99)] * 1000, 1),
        "rss_before_mib": round(rss_before / 1024, 1),
        "peak_rss_mib": round(peak / 1024, 1),
        "peak_growth_mib": round((peak - (rss_before if reset else peak_before)) / 1024, 1),
        "load_avg_1m": os.getloadavg()[0],
    }
    gc.unfreeze()
    for name, value in figures.items():
        record_property(name, value)
    print(f"\nflood of 1000: {figures}")
    assert outcome["complete"] and not outcome["timed_out"]
    assert statuses == {"succeeded": 1000}
    assert len(latencies) >= 5, f"the flood ended before polls could be measured: {figures}"
    # Effects are forked on the spawner's thread and orphans reaped by the reaper's (issue 17), so a burst
    # of ends no longer queues spawns and /proc walks in front of a poll (~40 ms at most here; 126 ms
    # when both ran on the event loop).
    assert max(busy) < 0.1, f"the event loop worked {max(busy) * 1000:.1f} ms in front of a poll: {figures}"
    if os.getloadavg()[0] <= (os.cpu_count() or 1):  # unless other processes oversubscribe the box
        assert max(latencies) < 0.1, f"a poll took {max(latencies) * 1000:.1f} ms during the flood: {figures}"
    assert peak - rss_before < 200 * 1024, f"peak RSS grew by {(peak - rss_before) / 1024:.0f} MiB"
    events = rows(settings.db, "select type, count(*) as n from events group by type")
    assert {r["type"]: r["n"] for r in events} == {
        "RUN_CREATED": 1,
        "EFFECT_REQUESTED": 1000,
        "EFFECT_STARTED": 1000,
        "EFFECT_RESOLVED": 1000,
    }
    journal = events_of(settings.db)
    assert max_overlap(journal, set(ids)) <= 32


GIBIBYTE = """
import sys
block = b'x' * 1048576
for _ in range(1024):
    sys.stdout.buffer.write(block)
sys.stdout.buffer.flush()
"""
# A numbered line every 10 ms stamped with the monotonic clock (one clock for every process on Linux).
TICK = re.compile(r"tick \d+ \d+\.\d{6}")
TICKER = """
import time
i = 0
while True:
    print(f'tick {i} {time.monotonic():.6f}', flush=True)
    i += 1
    time.sleep(0.01)
"""


@pytest.mark.slow
async def test_a_child_writing_a_gibibyte_is_capped_at_the_limit_while_another_effect_keeps_streaming(
    settings, record_property
):
    reset = reset_peak_rss()
    rss_before, peak_before = status_kib("VmRSS"), status_kib("VmHWM")
    ticks: list[tuple[float, float]] = []  # (printed, read through stream_effect)
    odd: list[tuple[str, int, str]] = []  # (line, cursor it was read from, the chunk's start)
    async with connected(settings, output_limit_bytes=MIB) as (_, client):
        ticker = await call(client, "dispatch_effect", command=py(TICKER), background=True)
        await read_until(client, ticker["effect_id"], "tick 1 ")
        start = await call(client, "stream_effect", effect_id=ticker["effect_id"])
        cursor = start["cursor"]
        flood_done = anyio.Event()

        async def follow_ticker() -> None:
            nonlocal cursor
            partial = start["data"].rpartition("\n")[2]  # a line the first read cut is finished by the next
            while not flood_done.is_set():
                chunk = await call(client, "stream_effect", effect_id=ticker["effect_id"], cursor=cursor, wait_s=1)
                now = time.monotonic()
                *lines, partial = (partial + chunk["data"]).split("\n")
                for line in lines:
                    if TICK.fullmatch(line):
                        ticks.append((float(line.split()[2]), now))
                    else:  # a cut or merged line would be an output bug: keep it, and what came with it
                        odd.append((line, cursor, chunk["data"][:200]))
                cursor = chunk["cursor"]

        async with anyio.create_task_group() as tg:
            tg.start_soon(follow_ticker)
            began = time.monotonic()
            flood = await call(client, "dispatch_effect", command=py(GIBIBYTE), wait_s=55)
            ended = time.monotonic()
            flood_done.set()
        await call(client, "cancel_effect", effect_id=ticker["effect_id"], grace_s=0.2)
    took = ended - began
    peak = status_kib("VmHWM")
    during = [(printed, read) for printed, read in ticks if began <= printed <= ended]
    delays = [read - printed for printed, read in during]
    figures = {
        "flood_s": round(took, 2),
        "flood_gib_per_s": round(1 / took, 2),
        "ticks_printed_during_flood": len(during),
        "ticks_read_before_flood_ended": sum(read <= ended for _, read in during),
        "stream_reads_during_flood": len({read for _, read in ticks if began <= read <= ended}),
        "tick_delay_max_ms": round(max(delays, default=0) * 1000, 1),
        "peak_rss_mib": round(peak / 1024, 1),
        "peak_growth_mib": round((peak - (rss_before if reset else peak_before)) / 1024, 1),
    }
    for name, value in figures.items():
        record_property(name, value)
    print(f"\n1 GiB flood: {figures}")
    assert not odd, f"the ticker's stream had lines it never printed: {odd}"
    assert flood["status"] == "succeeded", flood
    assert flood["output_truncated"] is True and flood["output_bytes"] == MIB
    assert (settings.output_dir / f"{flood['effect_id']}.log").stat().st_size == MIB
    assert took < 30
    # Starved by the flood, the other stream would be read once, after it: here it is read again and again.
    assert figures["stream_reads_during_flood"] >= 2, f"the other stream stalled during the flood: {figures}"
    assert max(delays) < 1.0, f"a line took {max(delays) * 1000:.0f} ms to stream during the flood: {figures}"
    assert peak - rss_before < 200 * 1024, f"peak RSS grew by {(peak - rss_before) / 1024:.0f} MiB"


# --- 4. retries -------------------------------------------------------------------------------------


async def test_every_attempt_of_a_failing_effect_is_journaled_and_each_backoff_doubles(settings):
    async with connected(settings) as (_, client):
        record = await call(
            client, "dispatch_effect", command=["/bin/false"], max_attempts=3, retry_backoff_s=0.2, wait_s=30
        )
    assert (record["status"], record["attempt"], record["max_attempts"], record["exit_code"]) == ("failed", 3, 3, 1)
    events = events_of(settings.db, record["effect_id"])
    assert [e["type"] for e in events] == [
        "EFFECT_REQUESTED",
        "EFFECT_STARTED",
        "EFFECT_PROGRESS",
        "EFFECT_STARTED",
        "EFFECT_PROGRESS",
        "EFFECT_STARTED",
        "EFFECT_FAILED",
    ]
    starts = [e for e in events if e["type"] == "EFFECT_STARTED"]
    retries = [e for e in events if e["type"] == "EFFECT_PROGRESS"]
    assert [e["data"]["attempt"] for e in starts] == [1, 2, 3]
    assert [e["data"]["retry"]["attempt"] for e in retries] == [1, 2]
    assert all(e["data"]["retry"]["exit_code"] == 1 for e in retries)
    for n, (ended, next_start) in enumerate(zip(retries, starts[1:], strict=True), start=1):
        waited = (when(next_start["data"]["started_at"]) - when(ended["ts"])).total_seconds()
        assert 0.2 * 2 ** (n - 1) <= waited < 0.2 * 2 ** (n - 1) + 1.5, f"backoff before attempt {n + 1}: {waited}"


async def test_a_flaky_effect_succeeds_on_a_later_attempt_and_replays_to_the_same_record(settings, tmp_path):
    marker = tmp_path / "tried-once"
    flaky = (
        "import os, sys\nseen = os.path.exists(sys.argv[1])\nopen(sys.argv[1], 'a').close()\nsys.exit(0 if seen else 5)"
    )
    async with connected(settings) as (_, client):
        record = await call(client, "dispatch_effect", command=py(flaky, str(marker)), max_attempts=3, wait_s=30)
        polled = await call(client, "poll_effect", effect_id=record["effect_id"])
    assert (record["status"], record["attempt"], record["exit_code"], record["error"]) == ("succeeded", 2, 0, None)
    events = events_of(settings.db, record["effect_id"])
    assert [e["type"] for e in events].count("EFFECT_STARTED") == 2 and events[-1]["type"] == "EFFECT_RESOLVED"
    await assert_journal_sound(settings.db, finished=True)

    # Replaying the events rebuilds the stored projection, table by table and row by row.
    stored = {table: rows(settings.db, f"select * from {table} order by {key}") for table, key in PROJECTION}
    replayed = await replay_projection(settings.db)
    assert set(replayed) == set(stored)
    for table, table_rows in stored.items():
        assert len(replayed[table]) == len(table_rows), f"{table}: {len(replayed[table])} rows replayed"
        for again, row in zip(replayed[table], table_rows, strict=True):
            differ = sorted(set(again) ^ set(row) | {k for k in set(again) & set(row) if again[k] != row[k]})
            assert again == row, f"{table}: the replayed row differs from the stored one in {differ}"
    (row,) = stored["effects"]
    assert (row["effect_id"], row["terminal_seq"]) == (record["effect_id"], events[-1]["seq"])

    # The records the server returned are that row; so is the record a server opened afresh reads back.
    async with connected(settings) as (_, client):
        reread = await call(client, "poll_effect", effect_id=record["effect_id"])
    for returned in (record, polled, reread):
        assert_record_is_row(returned, row)
    stable = set(record) - {"output_tail", "last_output_at", "stalled"}
    assert {k: reread[k] for k in stable} == {k: record[k] for k in stable}


PROJECTION = (("effects", "effect_id"), ("flows", "flow_id"), ("runs", "run_id"), ("budgets", "kind, name"))
RECORD_NAMES = {"group_name": "group"}  # an effects column -> the record field that shows it
JSON_COLUMNS = {"command", "result", "progress", "depends_on"}
# Each of these is compared, whatever other columns the table grows.
CORE_COLUMNS = {"effect_id", "run_id", "status", "command", "exit_code", "error", "attempt", "created_at"}
CORE_COLUMNS |= {"started_at", "finished_at", "result", "output_bytes", "output_truncated", "group_name"}


def assert_record_is_row(record: dict, row: dict) -> None:
    """Every field of an effect record that an effects column stores holds that column's value."""
    compared = set()
    for column, stored in row.items():
        field = RECORD_NAMES.get(column, column)
        if field not in record or column == "pid":  # pid: shown only while the effect runs
            continue
        if column == "command":  # null: the effect ran its spec's argv (the journal keeps it once)
            stored = command_of(stored, json.loads(row["spec"]))
        elif column in JSON_COLUMNS and stored is not None:
            stored = json.loads(stored)
        elif column == "output_truncated":
            stored = bool(stored)
        assert record[field] == stored, f"record {field}={record[field]!r} but the effects row has {stored!r}"
        compared.add(column)
    assert compared >= CORE_COLUMNS, f"not compared: {sorted(CORE_COLUMNS - compared)}"
    assert record["max_attempts"] == EffectSpec.model_validate(json.loads(row["spec"])).max_attempts


async def test_a_cancelled_effect_is_not_retried_whether_running_or_waiting_out_its_backoff(settings):
    async with connected(settings) as (_, client):
        running = await call(client, "dispatch_effect", command=py(BLOCK, "/nonexistent"), max_attempts=5, wait_s=0)
        await read_until(client, running["effect_id"], "up")
        cancelled = await call(client, "cancel_effect", effect_id=running["effect_id"], grace_s=0.2)
        backing_off = await call(
            client, "dispatch_effect", command=["/bin/false"], max_attempts=3, retry_backoff_s=30, wait_s=0
        )
        # Backing off: the failed first attempt is journaled as a retry, the effect is queued again.
        await wait_for(client, backing_off["effect_id"], lambda r: r["status"] == "queued" and r["error"] is not None)
        asked = time.monotonic()
        stopped = await call(client, "cancel_effect", effect_id=backing_off["effect_id"], reason="enough")
        took = time.monotonic() - asked
    assert (cancelled["status"], cancelled["cancel_reason"], cancelled["attempt"]) == ("cancelled", "user", 1)
    assert (stopped["status"], stopped["cancel_reason"], stopped["cancel_message"]) == ("cancelled", "user", "enough")
    assert took < 2, f"cancelling during a 30 s backoff took {took:.2f} s"
    for effect_id in (running["effect_id"], backing_off["effect_id"]):
        types = [e["type"] for e in events_of(settings.db, effect_id)]
        assert types.count("EFFECT_STARTED") == 1 and types[-1] == "EFFECT_CANCELLED", types


async def test_a_timed_out_effect_is_cancelled_with_reason_timeout_and_not_retried(settings):
    async with connected(settings) as (_, client):
        began = time.monotonic()
        record = await call(
            client, "dispatch_effect", command=py(SLEEP, "30"), timeout_s=0.3, max_attempts=3, retry_backoff_s=0
        )
        took = time.monotonic() - began
    assert (record["status"], record["cancel_reason"], record["attempt"]) == ("cancelled", "timeout", 1)
    assert took < 5
    types = [e["type"] for e in events_of(settings.db, record["effect_id"])]
    assert types.count("EFFECT_STARTED") == 1 and "EFFECT_PROGRESS" not in types


# --- 5. stalls --------------------------------------------------------------------------------------


async def test_a_silent_running_effect_is_flagged_stalled_and_unflagged_once_it_prints(settings, tmp_path):
    trigger = tmp_path / "speak"
    async with connected(settings, stall_after_s=0.5) as (_, client):
        record = await call(client, "dispatch_effect", command=py(BLOCK, str(trigger)), background=True, group="s")
        await read_until(client, record["effect_id"], "up")
        polled = await wait_for(client, record["effect_id"], lambda r: r["stalled"])
        quiet = (datetime.now(UTC) - when(polled["last_output_at"])).total_seconds()
        listed = await call(client, "list_effects", group="s")
        trigger.touch()
        await read_until(client, record["effect_id"], "released")
        spoke = await call(client, "poll_effect", effect_id=record["effect_id"])
        done = await call(client, "await_group", effect_ids=[record["effect_id"]], timeout_s=10)
    assert polled["status"] == "running" and quiet >= 0.5
    assert listed["effects"][0]["stalled"] is True
    assert spoke["stalled"] is False or spoke["status"] != "running"
    assert done["done"][0]["status"] == "succeeded" and done["done"][0]["stalled"] is False


async def test_an_effect_silent_past_its_idle_timeout_is_cancelled_but_a_chatty_one_is_not(settings):
    quiet = py("import time; print('hello', flush=True); time.sleep(60)")
    chatty = py("import time\nfor i in range(12):\n    print(i, flush=True); time.sleep(0.1)")
    async with connected(settings) as (_, client):
        silent = await call(
            client, "dispatch_effect", command=quiet, idle_timeout_s=0.5, max_attempts=3, background=True
        )
        talker = await call(client, "dispatch_effect", command=chatty, idle_timeout_s=0.5, background=True)
        outcome = await call(client, "await_group", effect_ids=[silent["effect_id"], talker["effect_id"]], timeout_s=20)
    records = {r["effect_id"]: r for r in outcome["done"]}
    cut = records[silent["effect_id"]]
    assert (cut["status"], cut["cancel_reason"], cut["attempt"]) == ("cancelled", "idle_timeout", 1)
    assert 0.5 <= cut["duration_s"] < 5
    assert records[talker["effect_id"]]["status"] == "succeeded"
    assert records[talker["effect_id"]]["duration_s"] > 0.5  # ran longer than the idle timeout, never silent


# --- 6. concurrency limits --------------------------------------------------------------------------


async def test_a_saturated_capped_group_does_not_starve_another_group(settings, tmp_path):
    release = tmp_path / "release"
    async with connected(settings) as (_, client):
        capped = []
        for n in range(6):  # the first dispatch sets the cap; later values are ignored
            record = await call(
                client,
                "dispatch_effect",
                command=py(BLOCK, str(release)),
                background=True,
                group="capped",
                group_max_concurrency=2 if n == 0 else 50,
            )
            capped.append(record["effect_id"])
        await wait_running(client, "capped", 2)
        began = time.monotonic()
        other = await call(client, "dispatch_effect", command=py("print('free')"), group="other", wait_s=20)
        took = time.monotonic() - began
        meanwhile = Counter(r["status"] for r in (await call(client, "list_effects", group="capped"))["effects"])
        release.touch()
        outcome = await call(client, "await_group", group="capped", timeout_s=30)
    assert other["status"] == "succeeded" and took < 3, f"the other group's effect waited {took:.2f} s"
    assert meanwhile == {"running": 2, "queued": 4}
    assert {r["status"] for r in outcome["done"]} == {"succeeded"}
    assert max_overlap(events_of(settings.db), set(capped)) == 2


async def test_a_harness_capped_at_one_never_runs_two_at_once_while_a_command_runs_alongside(settings, tmp_path):
    profile = HarnessProfile(
        name="fake",
        command=(sys.executable, "-m", "effectd.harness.fake", "--delay", "0.2", "{prompt}"),
        parser="claude",
        max_concurrency=1,
    )
    release = tmp_path / "release"
    async with connected(settings, harnesses={**settings.harnesses, "fake": profile}) as (_, client):
        beside = await call(client, "dispatch_effect", command=py(BLOCK, str(release)), background=True)
        agents = [
            (await call(client, "dispatch_effect", harness="fake", prompt=f"task {n}", background=True))["effect_id"]
            for n in range(2)
        ]
        await read_until(client, beside["effect_id"], "up")
        outcome = await call(client, "await_group", effect_ids=agents, timeout_s=30)
        release.touch()
        await call(client, "await_group", effect_ids=[beside["effect_id"]], timeout_s=10)
    assert {r["status"] for r in outcome["done"]} == {"succeeded"}
    events = events_of(settings.db)
    seq = {(e["effect_id"], e["type"] if e["type"] not in TERMINAL_TYPES else "END"): e["seq"] for e in events}
    first, second = sorted(agents, key=lambda i: seq[(i, "EFFECT_STARTED")])
    assert seq[(second, "EFFECT_STARTED")] > seq[(first, "END")], "two runs of a harness capped at 1 overlapped"
    b = beside["effect_id"]
    assert seq[(b, "EFFECT_STARTED")] < seq[(first, "END")] and seq[(b, "END")] > seq[(second, "END")]
    assert max_overlap(events, set(agents)) == 1


async def test_a_group_cap_still_holds_for_queued_effects_after_a_restart(settings, tmp_path):
    """The cap is part of what was accepted: a restart that reschedules the group's queued effects
    must not run them all at once."""
    release = tmp_path / "release"
    async with connected(settings, keep_queued=True) as (_, client):
        ids = [
            (
                await call(
                    client,
                    "dispatch_effect",
                    command=py(BLOCK, str(release)),
                    background=True,
                    group="capped",
                    group_max_concurrency=1,
                )
            )["effect_id"]
            for _ in range(3)
        ]
        await read_until(client, ids[0], "up")
    # The graceful stop cancelled the running one and kept the two queued ones for the next start.
    assert [r["status"] for r in rows(settings.db, "select status from effects order by effect_id")] == [
        "cancelled",
        "queued",
        "queued",
    ]
    async with connected(settings) as (_, client):
        running = await wait_running(client, "capped", 1)
        with anyio.move_on_after(1.0):  # both queued effects start at once here if the cap was forgotten
            running = await wait_running(client, "capped", 2)
        release.touch()
        await call(client, "await_group", group="capped", timeout_s=20)
    assert len(running) == 1, "after the restart the capped group ran 2 effects at once"


# --- 7. graceful shutdown timing --------------------------------------------------------------------

STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
kid = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])  # inherits SIG_IGN
print(f'server {os.getppid()} {os.getpid()} {kid.pid} ready', flush=True)  # one write, even unbuffered
time.sleep(120)
"""


async def test_closing_stdin_stops_an_effect_that_ignores_sigterm_within_its_grace_plus_one_and_a_half_seconds(
    tmp_path,
):
    db = tmp_path / "j.db"
    async with Client(stdio_params(db, ANY), read_timeout_seconds=70) as client:
        record = await call(client, "dispatch_effect", command=py(STUBBORN), background=True, grace_s=0.5)
        text = await read_until(client, record["effect_id"], "ready")
        server_pid, child, grandchild = (int(p) for p in text.split()[1:4])
        began = time.monotonic()
    await wait_gone([server_pid])
    took = time.monotonic() - began
    await wait_gone([child, grandchild])
    final = rows(db, "select status, cancel_reason, signal from effects")[0]
    print(f"\nshutdown with a SIGTERM-ignoring effect (grace 0.5 s): {took:.2f} s")
    assert took < 0.5 + 1.5, f"the server took {took:.2f} s to exit"
    assert took >= 0.45, "the effect was not given its grace"
    assert final == {"status": "cancelled", "cancel_reason": "shutdown", "signal": signal.SIGKILL}
