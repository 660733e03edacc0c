"""Memory, the journal and replay cannot drift: every live record equals the record rebuilt from the journal.

Hypothesis generates scenarios (dispatches with dependencies, timeouts, retries and idempotency
keys, cancels, pauses, graceful restarts and crashes) and runs each on the real engine with a fake
runner (tests/fakes.py), so hundreds of them fit in CI. Whenever no commit is in flight, every
effect's record as the engine answers it must equal the record rebuilt by folding the journal's
events, and the journal must stay sound: `seq` without gaps, one EFFECT_REQUESTED first, at most one
terminal event and nothing after it, and a projection that replay rebuilds exactly.

A crash is a copy of the journal (and the output directory) taken at a quiet moment, as the disk
would be if the server were SIGKILLed then; a new engine recovers from the copy.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from effectd.config.settings import Settings, build_settings
from effectd.engine.core import Engine
from effectd.errors import EffectdError
from effectd.journal.projection import EFFECT_COLUMNS, TERMINAL_EVENTS, EffectState, Event, fold_effect
from effectd.journal.store import replay_projection
from effectd.model.arguments import EffectRequest
from effectd.model.records import EffectSpec
from effectd.supervisor.effect import Effect
from effectd.supervisor.output import OutputLog
from tests.helpers.fakes import FakeRunner

# 40 scenarios in the developer loop (seconds); .ci/run sets 300.
EXAMPLES = int(os.environ.get("EFFECTD_EQUIVALENCE_EXAMPLES", "40"))
LIVE_ONLY = {"stalled", "last_output_at"}  # telemetry of a running process, never journaled
TELEMETRY = {"progress", "output_tail", "output_bytes", "output_truncated"}  # journaled with the end

behaviours = st.sampled_from(
    [
        ["fake", "exit=0"],
        ["fake", "exit=3"],
        ["fake", "exit=0", 'result={"answer": 42}'],
        ["fake", "exit=0", "bad-result"],
        ["fake", "hang"],
        ["fake", "hang", "ignore-term"],
        ["missing-program"],
    ]
)
dispatches = st.fixed_dictionaries(
    {
        "command": behaviours,
        "depends_on": st.lists(st.integers(0, 30), max_size=2),
        "timeout_s": st.sampled_from([None, None, 0.03]),
        "max_attempts": st.integers(1, 3),
        "retry_backoff_s": st.sampled_from([0.0, 0.01]),
        "key": st.sampled_from([None, None, None, "k1", "k2"]),
        "group": st.sampled_from([None, "g"]),
    }
)
operations = st.one_of(
    st.tuples(st.just("dispatch"), dispatches),
    # which effect, its grace, and whether to wait for the cancel to finish (else it goes on meanwhile)
    st.tuples(st.just("cancel"), st.tuples(st.integers(0, 30), st.sampled_from([0.02, 0.3]), st.booleans())),
    st.tuples(st.just("pause"), st.sampled_from([0.0, 0.02, 0.05])),
    st.tuples(st.just("restart"), st.booleans()),  # keep_queued or not
    st.tuples(st.just("crash"), st.just(None)),
)


def journal_events(db: Path) -> list[Event]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT type, run_id, effect_id, data, ts, seq FROM events ORDER BY seq").fetchall()
    return [Event(t, r, e, json.loads(d), ts, seq) for t, r, e, d, ts, seq in rows]


def rebuilt_records(settings: Settings) -> dict[str, dict[str, Any]]:
    """Every effect's record as the journal alone has it: its events folded, its output log read."""
    states: dict[str, EffectState] = {}
    for event in journal_events(settings.db):
        if event.effect_id is not None:
            folded = fold_effect(states.get(event.effect_id), event)
            if folded is not None:
                states[event.effect_id] = folded
    records = {}
    for effect_id, state in states.items():
        output = OutputLog.existing(settings.output_dir / f"{effect_id}.log", settings.output_limit_bytes)
        output.truncated = state.output_truncated
        effect = Effect(state, EffectSpec.model_validate(state.spec), output)
        records[effect_id] = effect.record().model_dump(mode="json")
    return records


def assert_sound(db: Path) -> None:
    events = journal_events(db)
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), "seq has a gap or a repeat"
    by_effect: dict[str, list[str]] = {}
    for event in events:
        if event.effect_id is not None:
            by_effect.setdefault(event.effect_id, []).append(event.type)
    for effect_id, types in by_effect.items():
        assert types[0] == "EFFECT_REQUESTED" and types.count("EFFECT_REQUESTED") == 1, (effect_id, types)
        terminal = [i for i, t in enumerate(types) if t in TERMINAL_EVENTS]
        assert len(terminal) <= 1, f"{effect_id} has {len(terminal)} terminal events: {types}"
        assert not terminal or terminal[0] == len(types) - 1, f"{effect_id}: events after its end: {types}"


async def assert_projection_replays(db: Path) -> None:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        stored = [dict(r) for r in conn.execute(f"SELECT {', '.join(EFFECT_COLUMNS)} FROM effects ORDER BY effect_id")]
    assert (await replay_projection(db))["effects"] == stored


async def quiet(engine: Engine) -> None:
    """Until no journal commit is in flight: then every committed event has been applied in memory."""
    with anyio.fail_after(10):
        while engine.stats()["journal_commits_in_flight"]:  # noqa: ASYNC110 - a counter, polled with a bound
            await anyio.sleep(0.001)


def last_seq(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])


async def assert_live_equals_journal(engine: Engine, ids: list[str]) -> None:
    """Compares at a quiet moment: reading the live records may let other tasks run (a record read back
    from the journal awaits), so the comparison counts only when nothing was committed meanwhile."""
    for _ in range(100):
        await quiet(engine)
        before = last_seq(engine.settings.db)
        live = {effect_id: (await engine.poll(effect_id)).model_dump(mode="json") for effect_id in ids}
        if engine.stats()["journal_commits_in_flight"] == 0 and last_seq(engine.settings.db) == before:
            break
    else:
        raise AssertionError("the engine never held still long enough to compare")
    rebuilt = rebuilt_records(engine.settings)
    for effect_id in ids:
        ended = live[effect_id]["status"] in ("succeeded", "failed", "cancelled", "skipped")
        ignored = LIVE_ONLY if ended else LIVE_ONLY | TELEMETRY
        journal = rebuilt[effect_id]
        differ = {k: (v, journal[k]) for k, v in live[effect_id].items() if k not in ignored and v != journal[k]}
        assert not differ, f"{effect_id}: live record and journal disagree (live, journal): {differ}"


@asynccontextmanager
async def opened(settings: Settings) -> AsyncIterator[Engine]:
    async with Engine.open(settings, runner=FakeRunner()) as engine:
        yield engine


def crash_copy(settings: Settings, into: Path) -> Settings:
    """The journal and output files as a SIGKILL at this moment would leave them, under another path."""
    into.mkdir()
    db = into / "journal.db"
    shutil.copyfile(settings.db, db)
    if Path(f"{settings.db}-wal").exists():
        shutil.copyfile(f"{settings.db}-wal", f"{db}-wal")
    if settings.output_dir.exists():
        shutil.copytree(settings.output_dir, into / "journal.output")
    return replace(settings, db=db)


async def play(operations: list[tuple[str, Any]], root: Path) -> None:
    base = replace(
        build_settings({}, db=root / "journal.db", allow_any_command=True),
        default_grace_s=0.02,
        result_grace_s=0.05,
        poll_control_s=60,
    )
    settings = base
    ids: list[str] = []
    async with anyio.create_task_group() as background, AsyncExitStack() as stack:
        engine = await stack.enter_async_context(opened(settings))
        for step, (kind, arg) in enumerate(operations):
            if kind == "dispatch":
                fields = dict(arg)
                fields["depends_on"] = [ids[i % len(ids)] for i in fields["depends_on"]] if ids else None
                fields["depends_on"] = fields["depends_on"] or None
                try:
                    dispatched = await engine.dispatch(EffectRequest(**fields, run_id="r"))
                except EffectdError:  # a key reused with other arguments: refused, nothing written
                    pass
                else:
                    if dispatched.record.effect_id not in ids:
                        ids.append(dispatched.record.effect_id)
            elif kind == "cancel" and ids:
                index, grace, wait = arg
                cancel = partial(engine.cancel, ids[index % len(ids)], message=f"step {step}", grace_s=grace)
                if wait:
                    with anyio.fail_after(10):
                        await cancel()
                else:
                    background.start_soon(cancel)
                    await anyio.sleep(0.01)  # the cancel is under way (its grace running) when the check comes
            elif kind == "pause":
                await anyio.sleep(arg)
            elif kind == "restart":
                await stack.aclose()
                settings = replace(settings, keep_queued=arg)
                engine = await stack.enter_async_context(opened(settings))
            elif kind == "crash":
                await quiet(engine)
                settings = crash_copy(settings, root / f"crash-{step}")
                engine = await stack.enter_async_context(opened(settings))  # the crashed one is closed at the end
            await assert_live_equals_journal(engine, ids)
        if ids:  # let whatever can end by itself end, then check once more
            await engine.await_group(effect_ids=ids, timeout_s=0.3)
        await assert_live_equals_journal(engine, ids)
    for db in [base.db, *(root / f"crash-{step}" / "journal.db" for step in range(len(operations)))]:
        if not db.exists():  # noqa: ASYNC240 - a test's own tmp file
            continue
        assert_sound(db)
        await assert_projection_replays(db)


@pytest.mark.timeout(900)
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same scenarios on every run: CI is reproducible
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(operations, min_size=1, max_size=10))
def test_every_live_record_equals_the_record_rebuilt_from_the_journal(operations: list[tuple[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as root:
        try:
            anyio.run(play, operations, Path(root))
        except BaseExceptionGroup as group:  # the failure itself, not the task groups it passed through
            raise leaf(group) from None


def leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
