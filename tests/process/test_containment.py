"""Containment and secrets, done for real: processes that leave the effect's process group or session
(GNU `timeout`, a double-forked `setsid` daemon, a process that clears its environment) never outlive
the effect, nor a SIGKILL of the server past its next start; orphans adopted by the server are reaped;
an effect never sees the server's EFFECTD_* secrets.

Each test runs the effect through the engine and a real MCP client, with the local runner in each
containment mode this machine offers ("cgroup" where a writable cgroup v2 exists, "tree" everywhere).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import pytest
from mcp import Client

from effectd.app import build_server
from effectd.config.settings import Settings
from effectd.engine.core import Engine
from effectd.runner.cgroups import Cgroups
from effectd.runner.local import LocalRunner
from effectd.runner.procfs import own_children, stat
from effectd.runner.reaper import REAPER
from tests.helpers.mcp import call, read_until, wait_until
from tests.helpers.processes import keeper_of, pid_alive, py, stdio_params

pytestmark = pytest.mark.anyio

CGROUPS = Cgroups.find() is not None
MODES = [
    pytest.param("cgroup", marks=pytest.mark.skipif(not CGROUPS, reason="no writable cgroup v2 here")),
    "tree",
]


def marked(effect_id: str) -> set[int]:
    """Live processes whose environment carries the effect's id."""
    needle = f"EFFECTD_EFFECT_ID={effect_id}".encode()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                environ = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            if needle in environ.split(b"\0") and pid_alive(int(entry)):
                found.add(int(entry))
    return found


@asynccontextmanager
async def client_with(settings: Settings, containment: str) -> AsyncIterator[tuple[LocalRunner, Client]]:
    runner = LocalRunner(containment)
    assert runner.containment == containment
    async with Engine.open(settings, runner=runner) as engine:
        async with Client(build_server(engine), read_timeout_seconds=70) as client:
            yield runner, client


@pytest.mark.parametrize("containment", MODES)
async def test_cancelling_sh_running_gnu_timeout_leaves_no_process_of_the_effect(settings, containment):
    async with client_with(settings, containment) as (_, client):
        record = await call(
            client, "dispatch_effect", command=["sh", "-c", "timeout 100 sleep 100"], background=True, grace_s=0.2
        )
        effect_id = record["effect_id"]
        await wait_until(lambda: len(marked(effect_id)) >= 3)  # sh, timeout, sleep
        running = await call(client, "poll_effect", effect_id=effect_id)
        groups = {stat(pid).pgrp for pid in marked(effect_id)}  # type: ignore[union-attr]
        assert len(groups) == 2, "timeout did not move to a process group of its own: nothing escaped"
        cancelled = await call(client, "cancel_effect", effect_id=effect_id)
        left = marked(effect_id)
    assert cancelled["status"] == "cancelled"
    assert not left, f"timeout and sleep outlived the cancel: {sorted(left)}"
    assert not pid_alive(running["pid"])


@pytest.mark.parametrize("containment", MODES)
async def test_a_finished_effects_setsid_daemon_is_killed_when_the_effect_ends(settings, containment):
    # A double fork: the subshell starts a daemon in a session of its own and exits, so the daemon's
    # parent is gone; the effect's leader then exits 0 while the daemon keeps its output pipe.
    script = "(setsid sh -c 'echo daemon $$; exec sleep 100' &); sleep 0.3; echo done"
    async with client_with(settings, containment) as (_, client):
        record = await call(client, "dispatch_effect", command=["sh", "-c", script], timeout_s=60)
        output = await call(client, "stream_effect", effect_id=record["effect_id"])
    daemon = int(re.search(r"daemon (\d+)", output["data"]).group(1))  # type: ignore[union-attr]
    assert record["status"] == "succeeded" and record["exit_code"] == 0
    # Ended before the effect's end was recorded: not a moment later.
    assert not pid_alive(daemon), "the daemon of a finished effect outlived it"


@pytest.mark.parametrize("containment", MODES)
async def test_orphans_adopted_by_the_server_are_reaped_while_the_effect_runs(settings, containment):
    script = "(sleep 2 & echo orphan $!); sleep 100"
    async with client_with(settings, containment) as (_, client):
        record = await call(client, "dispatch_effect", command=["sh", "-c", script], background=True, grace_s=0.2)
        text = await read_until(client, record["effect_id"], "orphan")
        orphan = int(re.search(r"orphan (\d+)", text).group(1))  # type: ignore[union-attr]
        # Its parent (the subshell, which exits right after its echo) dies: it is re-parented to this
        # process (the subreaper), not to PID 1.
        await wait_until(lambda: (fields := stat(orphan)) is not None and fields.ppid == os.getpid(), within_s=5)
        # It dies after two seconds; the server reaps it while the effect still runs: no zombie is left.
        await wait_until(lambda: stat(orphan) is None, within_s=10)
        still = await call(client, "poll_effect", effect_id=record["effect_id"])
        await call(client, "cancel_effect", effect_id=record["effect_id"])
    assert still["status"] == "running"

    def zombies() -> list[int]:
        return [pid for pid in own_children() if (f := stat(pid)) and f.dead and record["pid"] in (f.session, f.pgrp)]

    # The reaper's pass after an effect ends (within RELEASE_PASS_DELAY_S) takes what its orphans left.
    await wait_until(lambda: not zombies() and REAPER.settled(), within_s=10)


@pytest.mark.parametrize("containment", MODES)
async def test_the_zombies_an_ended_effect_leaves_are_reaped_after_it(settings, containment):
    # The leader exits at once; its background child, re-parented to the server, is ended with the
    # effect and left as a zombie of the server's. The reaper's pass after the effect's end takes it.
    async with client_with(settings, containment) as (_, client):
        record = await call(client, "dispatch_effect", command=["sh", "-c", "sleep 30 & echo $!"], grace_s=0.1)
        child = int(record["output_tail"].split()[-1])
        assert not pid_alive(child)
        await wait_until(lambda: stat(child) is None and REAPER.settled(), within_s=10)
    assert record["pid"] not in REAPER.sessions


async def test_grandchildren_that_escaped_a_sigkilled_server_die_at_its_next_start(tmp_path):
    db = tmp_path / "j.db"
    # `timeout` leaves the process group; the daemon leaves the session; where cgroups contain the
    # effect, one more process also clears its environment (no marker left to find it by).
    hidden = "(setsid env -i /bin/sh -c 'echo hidden $$; exec sleep 100' &);" if CGROUPS else ""
    script = (
        "(timeout 100 sh -c 'echo timeout $$; exec sleep 100' &);"
        "(setsid sh -c 'echo daemon $$; exec sleep 100' &);" + hidden + "sleep 0.3; echo server $PPID; sleep 100"
    )
    with suppress(Exception, BaseExceptionGroup):
        async with Client(stdio_params(db, "--allow-any-command"), read_timeout_seconds=70) as client:
            record = await call(client, "dispatch_effect", command=["sh", "-c", script], background=True)
            text = await read_until(client, record["effect_id"], "server")
            escaped = [int(pid) for pid in re.findall(r"(?:timeout|daemon|hidden) (\d+)", text)]
            server_pid = int(re.search(r"server (\d+)", text).group(1))  # type: ignore[union-attr]
            os.kill(keeper_of(server_pid), signal.SIGKILL)  # as if both were killed: only the next start is left
            os.kill(server_pid, signal.SIGKILL)
            await wait_until(lambda: not pid_alive(server_pid) and not pid_alive(record["pid"]))
    assert len(escaped) == (3 if CGROUPS else 2)
    assert all(pid_alive(pid) for pid in escaped), "nothing escaped the server's death: the test proves nothing"
    async with Client(stdio_params(db, "--allow-any-command"), read_timeout_seconds=70) as client:
        await wait_until(lambda: not any(pid_alive(pid) for pid in escaped), within_s=10)
        after = await call(client, "poll_effect", effect_id=record["effect_id"])
    assert (after["status"], after["error"]) == ("failed", "interrupted")


async def test_an_effect_inherits_no_effectd_variable_but_its_own_three(tmp_path):
    db = tmp_path / "j.db"
    env = {"EFFECTD_TOKEN": "s3cret-token", "EFFECTD_ANYTHING": "x"}
    code = "import json, os; print(json.dumps(dict(os.environ)))"
    async with Client(stdio_params(db, "--allow-any-command", env=env), read_timeout_seconds=70) as client:
        record = await call(client, "dispatch_effect", command=py(code), timeout_s=30)
        output = await call(client, "stream_effect", effect_id=record["effect_id"])
    assert record["status"] == "succeeded"
    seen = {name for name in json.loads(output["data"]) if name.startswith("EFFECTD_")}
    assert seen == {"EFFECTD_EFFECT_ID", "EFFECTD_RUN_ID", "EFFECTD_RESULT_FILE"}
    assert "s3cret-token" not in output["data"]


def test_an_unknown_containment_mode_is_refused_with_the_modes_allowed():
    with pytest.raises(ValueError, match="cgroup, tree, group"):
        LocalRunner("none")


async def test_the_cgroup_of_an_effect_is_removed_when_it_ends(settings):
    if not CGROUPS:
        pytest.skip("no writable cgroup v2 here")
    async with client_with(settings, "cgroup") as (runner, client):
        record = await call(client, "dispatch_effect", command=["sh", "-c", "echo hi"], timeout_s=30)
        root = runner.cgroup_root
    assert record["status"] == "succeeded"
    assert root is not None
    await wait_until(lambda: not (root / record["effect_id"]).exists(), within_s=10)  # removed off the loop


async def test_every_attempt_of_a_retried_effect_runs_in_its_cgroup(settings):
    # The cgroup of a failed attempt is removed off the event loop while the retry makes it again at
    # once (no backoff): the retry must wait for that removal, never lose its cgroup to it.
    if not CGROUPS:
        pytest.skip("no writable cgroup v2 here")
    async with client_with(settings, "cgroup") as (runner, client):
        for _ in range(3):
            record = await call(
                client,
                "dispatch_effect",
                command=["sh", "-c", "cat /proc/self/cgroup; exit 1"],
                max_attempts=4,
                timeout_s=30,
            )
            assert record["status"] == "failed" and record["attempt"] == 4
            text, cursor, eof = "", 0, False
            while not eof:
                chunk = await call(client, "stream_effect", effect_id=record["effect_id"], cursor=cursor)
                text, cursor, eof = text + chunk["data"], chunk["cursor"], chunk["eof"]
            lines = [line for line in text.splitlines() if line.startswith("0::")]
            assert len(lines) == 4 and all(line.endswith(f"/effectd/{record['effect_id']}") for line in lines), text


def strays(effect_id: str, root: Path | None) -> tuple[list[subprocess.Popen[bytes]], subprocess.Popen[bytes]]:
    """What a crash between an effect's end and its cleanup would leave: a process that carries the
    effect's id and, where cgroups contain effects, one without it in the effect's cgroup; and a
    stranger carrying the id of no recorded effect."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("EFFECTD_")}
    sleep = ["sleep", "100"]
    left = [subprocess.Popen(sleep, env={**base, "EFFECTD_EFFECT_ID": effect_id}, start_new_session=True)]
    stranger = subprocess.Popen(sleep, env={**base, "EFFECTD_EFFECT_ID": "eff_nowhere"}, start_new_session=True)
    if root is not None:
        (root / effect_id).mkdir()
        hidden = subprocess.Popen(sleep, env={"PATH": os.defpath}, start_new_session=True)
        (root / effect_id / "cgroup.procs").write_text(str(hidden.pid))
        left.append(hidden)
    return left, stranger


async def test_the_next_start_kills_what_a_finished_effect_left_and_nothing_unrelated(settings):
    async with client_with(settings, "cgroup" if CGROUPS else "tree") as (runner, client):
        record = await call(client, "dispatch_effect", command=["true"], timeout_s=30)
        root = runner.cgroup_root
    assert record["status"] == "succeeded"
    left, stranger = strays(record["effect_id"], root)
    try:
        async with client_with(settings, "cgroup" if CGROUPS else "tree") as (_, client):
            await wait_until(lambda: all(p.poll() is not None for p in left), within_s=10)
            assert (await call(client, "poll_effect", effect_id=record["effect_id"]))["status"] == "succeeded"
        assert stranger.poll() is None, "a process of no recorded effect was killed"
        assert root is None or not (root / record["effect_id"]).exists()
    finally:
        for process in [*left, stranger]:
            process.kill()
            process.wait()
        if root is not None and (root / record["effect_id"]).exists():
            (root / record["effect_id"]).rmdir()


def test_the_reaper_never_takes_the_exit_status_of_a_child_it_does_not_own():
    LocalRunner("tree")  # this process becomes a subreaper, as a server is
    assert REAPER.subreaper
    # Another part of the program (or a program embedding the engine) waits for its own children,
    # in sessions of their own: the reaper must leave their zombies to them.
    children = [subprocess.Popen(["sh", "-c", "exit 7"], start_new_session=True) for _ in range(3)]
    deadline = time.monotonic() + 10
    while not all((f := stat(p.pid)) is not None and f.dead for p in children):
        assert time.monotonic() < deadline, "the children never exited"
        time.sleep(0.01)
    REAPER.reap()
    assert [p.wait(timeout=5) for p in children] == [7, 7, 7]
