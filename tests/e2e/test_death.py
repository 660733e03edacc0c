"""Death of the server (CONTRACT v3): after a SIGKILL of the server, every process of every effect it ran,
descendants included, whatever process group or session they moved to, is gone within 1 s.

The parent-death signal reaches only each effect's leader; the keeper (`effectd.runner.keeper`) kills
the rest when its pipe from the server closes. Each test runs a real `effectd serve` over stdio.
"""

from __future__ import annotations

import os
import re
import signal
import time
from contextlib import suppress

import pytest
from mcp import Client

from effectd.runner.cgroups import Cgroups
from tests.helpers.mcp import call, read_until, wait_until
from tests.helpers.processes import keeper_of, pid_alive, stdio_params

pytestmark = pytest.mark.anyio

CGROUPS = Cgroups.find() is not None

# Each effect leaves two grandchildren: a daemon in a session of its own, and one in a subshell.
TWO_GRANDCHILDREN = (
    "(setsid sh -c 'echo daemon $$; exec sleep 100' &);"
    "(sh -c 'echo subshell $$; exec sleep 100' &);"
    "sleep 0.1; echo server $PPID; sleep 100"
)


async def start_effects(client: Client, count: int, script: str) -> tuple[int, list[int]]:
    """Dispatches `count` effects running `script`; the server's pid and every grandchild's, once all run."""
    ids = [
        (await call(client, "dispatch_effect", command=["sh", "-c", script], background=True))["effect_id"]
        for _ in range(count)
    ]
    server, grandchildren = 0, []
    for effect_id in ids:
        text = await read_until(client, effect_id, "server")
        grandchildren += [int(pid) for pid in re.findall(r"(?:daemon|subshell|hidden) (\d+)", text)]
        server = int(re.search(r"server (\d+)", text).group(1))  # type: ignore[union-attr]
    return server, grandchildren


def gone_within(pids: list[int], within_s: float) -> float | None:
    """Seconds until every one of `pids` is gone, or None if some still live after `within_s`."""
    started = time.monotonic()
    while any(pid_alive(pid) for pid in pids):
        if time.monotonic() - started > within_s:
            return None
        time.sleep(0.005)
    return time.monotonic() - started


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def test_a_sigkilled_server_leaves_no_descendant_of_its_effects_after_1s(tmp_path):
    grandchildren: list[int] = []
    try:
        with suppress(Exception, BaseExceptionGroup):  # the transport breaks with the server
            async with Client(stdio_params(tmp_path / "j.db", "--allow-any-command"), read_timeout_seconds=70) as c:
                server, grandchildren = await start_effects(c, 10, TWO_GRANDCHILDREN)
                assert len(grandchildren) == 20 and all(pid_alive(pid) for pid in grandchildren)
                os.kill(server, signal.SIGKILL)
                took = gone_within(grandchildren, within_s=1.0)
        assert len(grandchildren) == 20
        assert took is not None, f"{sum(map(pid_alive, grandchildren))} of 20 grandchildren outlived the server by 1 s"
    finally:
        kill_all(grandchildren)


@pytest.mark.skipif(not CGROUPS, reason="no writable cgroup v2 here: a process that clears its environment is lost")
async def test_a_daemon_that_clears_its_environment_dies_with_the_server_too(tmp_path):
    hidden = "(setsid env -i /bin/sh -c 'echo hidden $$; exec sleep 100' &); sleep 0.1; echo server $PPID; sleep 100"
    grandchildren: list[int] = []
    try:
        with suppress(Exception, BaseExceptionGroup):
            async with Client(stdio_params(tmp_path / "j.db", "--allow-any-command"), read_timeout_seconds=70) as c:
                server, grandchildren = await start_effects(c, 3, hidden)
                os.kill(server, signal.SIGKILL)
                took = gone_within(grandchildren, within_s=1.0)
        assert len(grandchildren) == 3
        assert took is not None, "a daemon with no marker, in a session of its own, outlived the server"
    finally:
        kill_all(grandchildren)


async def test_a_server_whose_keeper_was_killed_starts_another_and_still_kills_all(tmp_path):
    grandchildren: list[int] = []
    try:
        with suppress(Exception, BaseExceptionGroup):
            async with Client(stdio_params(tmp_path / "j.db", "--allow-any-command"), read_timeout_seconds=70) as c:
                server, first = await start_effects(c, 1, TWO_GRANDCHILDREN)
                keeper = keeper_of(server)
                os.kill(keeper, signal.SIGKILL)
                await wait_until(lambda: not pid_alive(keeper))
                server, grandchildren = await start_effects(c, 2, TWO_GRANDCHILDREN)
                assert keeper_of(server) != keeper
                grandchildren += first
                os.kill(server, signal.SIGKILL)
                took = gone_within(grandchildren, within_s=1.0)
        assert len(grandchildren) == 6
        # The first effect started while the old keeper lived: the new one was told of it too.
        assert took is not None, f"{sum(map(pid_alive, grandchildren))} of 6 outlived the server by 1 s"
    finally:
        kill_all(grandchildren)


async def test_a_clean_stop_leaves_the_keeper_nothing_to_do_and_it_exits(tmp_path):
    async with Client(stdio_params(tmp_path / "j.db", "--allow-any-command"), read_timeout_seconds=70) as client:
        server, _ = await start_effects(client, 1, "echo server $PPID; sleep 100")
        keeper = keeper_of(server)
        assert pid_alive(keeper)
    await wait_until(lambda: not pid_alive(keeper), within_s=10)
