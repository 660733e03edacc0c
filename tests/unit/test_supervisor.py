"""The supervisor's races and its runner seam, with a fake runner (tests/fakes.py): no real process."""

from __future__ import annotations

import shutil
import signal
from dataclasses import replace
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from effectd.config.settings import Settings
from effectd.engine.core import Engine
from effectd.model.arguments import EffectRequest
from tests.helpers.fakes import FakeRunner

pytestmark = pytest.mark.anyio


async def test_a_cancel_during_the_start_kills_the_process_once_it_exists(settings: Settings) -> None:
    runner = FakeRunner()
    runner.hold_start = anyio.Event()
    async with Engine.open(settings, runner=runner) as engine:
        record = (await engine.dispatch(EffectRequest(command=["fake", "hang"]))).record
        with anyio.fail_after(5):
            while engine.stats()["journal_commits_in_flight"] or not runner.hold_start.statistics().tasks_waiting:  # noqa: ASYNC110
                await anyio.sleep(0.005)
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: engine.cancel(record.effect_id, message="while starting"))
            await anyio.lowlevel.checkpoint()  # the cancel is asked for while the runner is still starting the process
            runner.hold_start.set()
        ended = await engine.poll(record.effect_id)
    assert (ended.status, ended.cancel_reason, ended.cancel_message) == ("cancelled", "user", "while starting")
    [process] = runner.processes
    assert not process.alive and process.closed and process.signals[0] == signal.SIGTERM


async def test_a_process_that_ignores_sigterm_gets_sigkill_when_the_grace_ends(settings: Settings) -> None:
    runner = FakeRunner()
    async with Engine.open(settings, runner=runner) as engine:
        record = (await engine.dispatch(EffectRequest(command=["fake", "hang", "ignore-term"]))).record
        await engine.read_output(record.effect_id, wait_s=5)
        began = anyio.current_time()
        ended = await engine.cancel(record.effect_id, grace_s=0.1)
        took = anyio.current_time() - began
    [process] = runner.processes
    assert process.signals == [signal.SIGTERM, signal.SIGKILL]
    assert (ended.status, ended.signal) == ("cancelled", signal.SIGKILL)
    assert 0.1 <= took < 2, took


async def test_the_result_comes_through_the_runner(settings: Settings) -> None:
    runner = FakeRunner()
    async with Engine.open(settings, runner=runner) as engine:
        record = (await engine.dispatch(EffectRequest(command=["fake", "exit=0", 'result={"n": 7}']))).record
        ended = await engine.follow(record.effect_id, 5)
    assert (ended.status, ended.result) == ("succeeded", {"n": 7})
    assert runner.processes[0].launch.result_file is not None
    assert runner.processes[0].launch.env["EFFECTD_RESULT_FILE"] == runner.processes[0].launch.result_file


async def test_a_start_that_fails_counts_as_an_attempt_and_is_retried(settings: Settings) -> None:
    runner = FakeRunner()
    async with Engine.open(settings, runner=runner) as engine:
        record = (await engine.dispatch(EffectRequest(command=["no-such-program"], max_attempts=3))).record
        ended = await engine.follow(record.effect_id, 5)
    assert (ended.status, ended.attempt, ended.started_at) == ("failed", 3, None)
    assert "no such executable" in (ended.error or "")


async def test_recovery_asks_the_runner_for_the_leftovers_of_interrupted_effects(
    settings: Settings, tmp_path: Path
) -> None:
    runner = FakeRunner()
    async with Engine.open(settings, runner=runner) as engine:
        record = (await engine.dispatch(EffectRequest(command=["fake", "hang"]))).record
        running = await engine.poll(record.effect_id)
        with anyio.fail_after(5):
            while running.status != "running":  # noqa: ASYNC110 - polled with a bound
                await anyio.sleep(0.005)
                running = await engine.poll(record.effect_id)
        while engine.stats()["journal_commits_in_flight"]:  # noqa: ASYNC110
            await anyio.sleep(0.001)
        # The disk as a SIGKILL of the server would leave it now.
        crashed = tmp_path / "crashed"
        crashed.mkdir()
        shutil.copyfile(settings.db, crashed / "journal.db")
        shutil.copyfile(f"{settings.db}-wal", crashed / "journal.db-wal")
    after = FakeRunner()
    async with Engine.open(replace(settings, db=crashed / "journal.db"), runner=after) as engine:
        recovered = await engine.poll(record.effect_id)
    [asked] = after.leftovers_asked
    process = runner.processes[0]
    assert (asked.effect_id, asked.pid, asked.start_marker) == (record.effect_id, process.pid, process.start_marker)
    assert (recovered.status, recovered.error) == ("failed", "interrupted")
    assert after.processes == []  # an interrupted effect is never started again
