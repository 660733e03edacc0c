"""Timeouts, graces, backoffs and race bounds on a virtual clock (tests/helpers/clock.py) and the fake
runner: time moves only when the test advances it, so each bound is checked just before and just after
it, and no test waits it out. Every test is also bounded in real time."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import anyio
import anyio.to_thread
import pytest

from effectd.config.settings import Settings
from effectd.engine.core import Engine
from effectd.model.arguments import EffectRequest
from effectd.model.records import GroupWait
from tests.helpers.clock import Clock, virtual_backend
from tests.helpers.fakes import FakeRunner

pytestmark = pytest.mark.anyio

REAL_BOUND_S = 10


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, object]]:
    return virtual_backend()


@pytest.fixture
async def clock() -> Clock:
    return Clock.current()


async def quiet(engine: Engine, clock: Clock, until: Callable[[], bool] = lambda: True) -> None:
    """Waits in real time (the journal's thread works in real time) until `until()` holds, no journal
    commit is in flight and the loop is quiet at the current virtual time."""
    while True:
        await clock.settle()
        if until() and not engine.stats()["journal_commits_in_flight"]:
            await clock.settle()
            return
        await anyio.to_thread.run_sync(time.sleep, 0.001)


async def running(engine: Engine, clock: Clock, effect_id: str, armed: float | None = None) -> None:
    """Returns once the effect's process runs and prints (and a timer of `armed` seconds is set)."""
    await engine.read_output(effect_id, wait_s=3600)  # its first line (a virtual bound: the line comes first)
    await quiet(engine, clock, lambda: armed is None or clock.armed(armed))


@pytest.mark.parametrize(("bound", "reason"), [("timeout_s", "timeout"), ("idle_timeout_s", "idle_timeout")])
async def test_a_timeout_cancels_a_hanging_silent_effect_when_virtual_time_reaches_it_and_not_before(
    settings: Settings, clock: Clock, bound: str, reason: str
) -> None:
    """`timeout_s` counts from the start, `idle_timeout_s` from the last output (here: the first line)."""
    runner = FakeRunner()
    with clock.real_fail_after(REAL_BOUND_S):
        async with Engine.open(settings, runner=runner) as engine:
            record = (await engine.dispatch(EffectRequest(command=["fake", "hang"], **{bound: 30}))).record
            await running(engine, clock, record.effect_id, armed=30)
            [process] = runner.processes
            await clock.advance(29.99)
            await quiet(engine, clock)
            assert process.signals == []
            assert (await engine.poll(record.effect_id)).status == "running"
            await clock.advance(0.02)
            ended = await engine.follow(record.effect_id, None)
    assert (ended.status, ended.cancel_reason) == ("cancelled", reason)
    assert process.signals == [signal.SIGTERM]


async def test_output_restarts_the_idle_timeout(settings: Settings, clock: Clock) -> None:
    runner = FakeRunner()
    with clock.real_fail_after(REAL_BOUND_S):
        async with Engine.open(settings, runner=runner) as engine:
            record = (await engine.dispatch(EffectRequest(command=["fake", "hang"], idle_timeout_s=10))).record
            await running(engine, clock, record.effect_id, armed=10)
            [process] = runner.processes
            await clock.advance(9)
            process.emit(b"still working\n")
            await quiet(engine, clock)
            assert "still working" in (await engine.read_output(record.effect_id)).data
            await clock.advance(9)  # 18 s since it started, 9 since it last printed
            await quiet(engine, clock)
            assert process.signals == []
            assert (await engine.poll(record.effect_id)).status == "running"
            await clock.advance(1.02)
            ended = await engine.follow(record.effect_id, None)
    assert (ended.status, ended.cancel_reason) == ("cancelled", "idle_timeout")


async def test_an_effect_that_ignores_sigterm_gets_sigkill_only_when_its_grace_ends(
    settings: Settings, clock: Clock
) -> None:
    runner = FakeRunner()
    request = EffectRequest(command=["fake", "hang", "ignore-term"], timeout_s=5, grace_s=20)
    with clock.real_fail_after(REAL_BOUND_S):
        async with Engine.open(settings, runner=runner) as engine:
            record = (await engine.dispatch(request)).record
            await running(engine, clock, record.effect_id, armed=5)
            [process] = runner.processes
            await clock.advance(5)
            await quiet(engine, clock, lambda: process.signals == [signal.SIGTERM] and clock.armed(20))
            await clock.advance(19.99)  # the grace is not over
            await quiet(engine, clock)
            assert process.signals == [signal.SIGTERM] and process.alive
            await clock.advance(0.02)
            ended = await engine.follow(record.effect_id, None)
    assert process.signals == [signal.SIGTERM, signal.SIGKILL]
    assert (ended.status, ended.cancel_reason, ended.signal) == ("cancelled", "timeout", signal.SIGKILL)


async def test_await_group_times_out_at_its_bound_and_not_before(settings: Settings, clock: Clock) -> None:
    runner = FakeRunner()
    answer: list[GroupWait] = []

    with clock.real_fail_after(REAL_BOUND_S):
        async with Engine.open(settings, runner=runner) as engine:
            for _ in range(2):
                record = (await engine.dispatch(EffectRequest(command=["fake", "hang"], group="g"))).record
                await running(engine, clock, record.effect_id)

            async def wait() -> None:
                answer.append(await engine.await_group(group="g", timeout_s=30))

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                await quiet(engine, clock, lambda: clock.armed(30))
                await clock.advance(29.99)
                await quiet(engine, clock)
                assert answer == []
                await clock.advance(0.02)
            [waited] = answer
            assert (waited.timed_out, waited.complete, waited.done, len(waited.pending)) == (True, False, [], 2)
            await engine.cancel_group("g")


async def test_a_failed_attempt_is_retried_after_a_backoff_that_doubles(settings: Settings, clock: Clock) -> None:
    runner = FakeRunner()
    request = EffectRequest(command=["fake", "exit=1"], max_attempts=3, retry_backoff_s=10)
    with clock.real_fail_after(REAL_BOUND_S):
        async with Engine.open(settings, runner=runner) as engine:
            record = (await engine.dispatch(request)).record
            await quiet(engine, clock, lambda: len(runner.processes) == 1 and clock.armed(10))
            await clock.advance(9.99)
            await quiet(engine, clock)
            assert len(runner.processes) == 1
            await clock.advance(0.02)  # 10 s: the second attempt
            await quiet(engine, clock, lambda: len(runner.processes) == 2 and clock.armed(20))
            await clock.advance(19.99)  # the next backoff is 20 s
            await quiet(engine, clock)
            assert len(runner.processes) == 2
            await clock.advance(0.02)
            ended = await engine.follow(record.effect_id, None)
    assert (ended.status, ended.attempt, len(runner.processes)) == ("failed", 3, 3)


async def test_first_success_is_decided_by_the_earliest_success_not_the_earliest_end(
    settings: Settings, clock: Clock
) -> None:
    runner = FakeRunner()
    answer: list[GroupWait] = []
    commands = {
        "fails first": ["fake", "after=3", "exit=1"],
        "succeeds second": ["fake", "after=5", "exit=0"],
        "would succeed third": ["fake", "after=8", "exit=0"],
    }
    with clock.real_fail_after(REAL_BOUND_S):
        async with Engine.open(settings, runner=runner) as engine:
            ids = {}
            for label, command in commands.items():
                record = (await engine.dispatch(EffectRequest(command=command, group="race", label=label))).record
                ids[label] = record.effect_id
                await running(engine, clock, record.effect_id)

            async def wait() -> None:
                answer.append(await engine.await_group(group="race", mode="first_success", timeout_s=60))

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait)
                await quiet(engine, clock, lambda: clock.armed(60))
                await clock.advance(3.01)  # one failed: no winner yet
                await quiet(engine, clock)
                assert answer == []
                assert (await engine.poll(ids["fails first"])).status == "failed"
                await clock.advance(2)  # 5.01: the success decides the race
            [waited] = answer
            third = await engine.poll(ids["would succeed third"])
    assert (waited.satisfied, waited.timed_out) == (True, False)
    assert [w.effect_id for w in waited.winners or []] == [ids["succeeds second"]]
    assert (third.status, third.cancel_reason) == ("cancelled", "superseded")
