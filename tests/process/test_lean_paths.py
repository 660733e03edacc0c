"""The per-effect work taken out for speed (issue 17), each shown to keep what it must."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import anyio
import pytest

from effectd.app import build_server
from effectd.engine.core import Engine
from effectd.runner.local import SPAWNERS
from effectd.support.flag import Flag
from tests.helpers.mcp import call, read_until
from tests.helpers.processes import py

pytestmark = pytest.mark.anyio


def tracing_middleware(engine: Engine) -> list[str]:
    return [type(m).__name__ for m in build_server(engine).middleware if "OpenTelemetry" in type(m).__name__]


async def test_the_sdk_tracing_middleware_is_left_out_unless_opentelemetry_is_configured(engine, monkeypatch):
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    assert tracing_middleware(engine) == []
    monkeypatch.setenv("OTEL_SERVICE_NAME", "effectd")
    assert tracing_middleware(engine) == ["OpenTelemetryMiddleware"]


def forking_thread(pid: int) -> int | None:
    """The thread id of the thread of this process that forked `pid` (its parent thread)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            children = Path(f"/proc/self/task/{tid}/children").read_text().split()
        except OSError:
            continue
        if str(pid) in children:
            return int(tid)
    return None


async def test_effects_are_started_from_the_long_lived_spawner_threads_not_the_event_loop(client):
    # The parent-death signal fires when the thread that started the child ends: every effect comes
    # from one of the spawner's threads, which live as long as the server (never a retiring worker).
    code = "import time; print('up', flush=True); time.sleep(30)"
    ids = [
        (await call(client, "dispatch_effect", command=py(code), background=True, grace_s=0.1))["effect_id"]
        for _ in range(3)
    ]
    pids = []
    for effect_id in ids:
        await read_until(client, effect_id, "up")
        pids.append((await call(client, "poll_effect", effect_id=effect_id))["pid"])
    spawners = {t.native_id for t in threading.enumerate() if t.name.startswith("effectd-spawn")}
    assert 1 <= len(spawners) <= SPAWNERS
    assert threading.get_native_id() not in spawners  # not the event loop's thread
    assert all(forking_thread(pid) in spawners for pid in pids)
    for effect_id in ids:
        await call(client, "cancel_effect", effect_id=effect_id)


async def test_a_flag_wakes_every_waiter_and_a_set_flag_does_not_block():
    flag, woken = Flag(), []

    async def waiter(n: int) -> None:
        await flag.wait()
        woken.append(n)

    async with anyio.create_task_group() as tg:
        for n in range(3):
            tg.start_soon(waiter, n)
        await anyio.wait_all_tasks_blocked()
        assert woken == [] and not flag.is_set()
        flag.set()
    assert sorted(woken) == [0, 1, 2]
    with anyio.fail_after(1):
        await flag.wait()  # already set: returns at once
