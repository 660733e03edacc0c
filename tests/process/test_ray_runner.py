"""The Ray runner on a local Ray cluster of two simulated nodes (started once for the module).

The head offers the custom resource `head_only`, the worker node `special`; a third node, `doomed`,
is added and killed by the node-loss test. Effects are plain processes on this machine, so the tests
can see them in /proc: their parent (a Ray worker), their process group, their end.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from effectd.app import build_server
from effectd.config.settings import Settings
from effectd.engine.core import Engine
from tests.helpers.mcp import call, read_until, wait_until
from tests.helpers.processes import effectd_bin, pid_alive, py

ray = pytest.importorskip("ray", reason="the Ray runner's tests need Ray: pip install -e '.[ray]'")
cluster_utils = pytest.importorskip("ray.cluster_utils")
from effectd.runner.ray_runner import RayRunner  # noqa: E402

# One local Ray at a time on this machine: every Ray test runs on the same xdist worker.
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300), pytest.mark.xdist_group("ray")]

ENDED = ("succeeded", "failed", "cancelled", "skipped")
SMALL = {"num_cpus": 1, "object_store_memory": 80 * 1024 * 1024}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    made = cluster_utils.Cluster(
        initialize_head=True,
        head_node_args={**SMALL, "include_dashboard": False, "resources": {"head_only": 1}},
    )
    try:
        made.add_node(**SMALL, resources={"special": 2})
        made.wait_for_nodes()
        RayRunner(made.address).connect()  # as the server joins a cluster (this process is its driver)
        yield made
    finally:
        ray.shutdown()
        made.shutdown()
    # Ray must not leave this process ignoring SIGCHLD: the local runner's tests run after these.
    assert "SigIgn" in (status := Path("/proc/self/status").read_text())
    ignored = int(next(line for line in status.splitlines() if line.startswith("SigIgn")).split()[1], 16)
    assert not ignored & (1 << (signal.SIGCHLD - 1))


def node_ids(resource: str) -> set[str]:
    return {row["NodeID"] for row in ray.nodes() if row["Alive"] and resource in row["Resources"]}


@asynccontextmanager
async def ray_client(settings: Settings) -> AsyncIterator[Client]:
    async with Engine.open(replace(settings, runner="ray")) as engine:
        async with Client(build_server(engine), read_timeout_seconds=120) as client:
            yield client


def descendants_of_effect(effect_id: str) -> set[int]:
    needle = f"EFFECTD_EFFECT_ID={effect_id}".encode()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if needle in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0") and pid_alive(int(entry)):
                    found.add(int(entry))
            except OSError:
                continue
    return found


async def test_an_effect_runs_in_a_ray_worker_and_its_result_comes_back(cluster, settings):
    code = (
        "import json, os; parent = open(f'/proc/{os.getppid()}/cmdline','rb').read().replace(b'\\0', b' ');"
        "print(parent.decode()); json.dump({'answer': 42}, open(os.environ['EFFECTD_RESULT_FILE'], 'w'))"
    )
    async with ray_client(settings) as client:
        record = await call(client, "dispatch_effect", command=py(code), timeout_s=60)
        output = await call(client, "stream_effect", effect_id=record["effect_id"])
    assert record["status"] == "succeeded", (record["error"], output["data"])
    assert "ray::NodeExecutor" in output["data"], f"the effect's parent is not a Ray worker: {output['data']!r}"
    assert record["result"] == {"answer": 42}
    assert record["node"].startswith("ray:") and record["node"].split(":", 1)[1].split("@")[0] in node_ids("CPU")


async def test_effects_are_placed_by_resource_on_the_node_that_has_it(cluster, settings):
    async with ray_client(settings) as client:
        special = await call(client, "dispatch_effect", command=["true"], resources={"special": 1}, timeout_s=60)
        head = await call(client, "dispatch_effect", command=["true"], resources={"head_only": 1}, timeout_s=60)
        nowhere = await call(client, "dispatch_effect", command=["true"], resources={"unicorn": 1}, timeout_s=60)
        listed = await call(client, "list_effects")
    node_of = {r["effect_id"]: r["node"] for r in listed["effects"]}
    assert special["status"] == head["status"] == "succeeded"
    assert special["node"].split("@")[0].removeprefix("ray:") in node_ids("special")
    assert head["node"].split("@")[0].removeprefix("ray:") in node_ids("head_only")
    assert node_of[special["effect_id"]] == special["node"]  # journaled and listed, not only live
    assert nowhere["status"] == "failed" and "unicorn" in nowhere["error"] and "special" in nowhere["error"]


async def test_output_streams_back_while_the_effect_runs(cluster, settings, tmp_path):
    flag = tmp_path / "go"
    code = f"import os, time; print('first', flush=True)\nwhile not os.path.exists({str(flag)!r}): time.sleep(0.05)"
    async with ray_client(settings) as client:
        record = await call(client, "dispatch_effect", command=py(code), background=True, timeout_s=60)
        await read_until(client, record["effect_id"], "first", within_s=60)
        during = await call(client, "poll_effect", effect_id=record["effect_id"])
        flag.touch()
        with anyio.fail_after(60):
            while (done := await call(client, "poll_effect", effect_id=record["effect_id"]))["status"] == "running":  # noqa: ASYNC110
                await anyio.sleep(0.05)
    assert during["status"] == "running" and during["output_tail"].startswith("first")
    assert done["status"] == "succeeded"


async def test_a_cancel_kills_the_remote_tree_within_the_grace(cluster, settings):
    # The child ignores SIGTERM and has a grandchild in a session of its own.
    code = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "g = subprocess.Popen(['sleep', '300'], start_new_session=True); print(f'grandchild {g.pid}', flush=True);"
        "time.sleep(300)"
    )
    async with ray_client(settings) as client:
        record = await call(client, "dispatch_effect", command=py(code), background=True, grace_s=0.5)
        text = await read_until(client, record["effect_id"], "grandchild", within_s=60)
        grandchild = int(re.search(r"grandchild (\d+)", text).group(1))  # type: ignore[union-attr]
        running = await call(client, "poll_effect", effect_id=record["effect_id"])
        started = time.monotonic()
        cancelled = await call(client, "cancel_effect", effect_id=record["effect_id"])
        took = time.monotonic() - started
        left = descendants_of_effect(record["effect_id"])
    assert cancelled["status"] == "cancelled"
    assert not left and not pid_alive(grandchild) and not pid_alive(running["pid"])
    assert took < 0.5 + 0.5 + 1.0, f"the cancel took {took:.2f} s"  # grace + 0.5 s, and a loaded machine's call


async def test_a_timeout_works_on_ray(cluster, settings):
    async with ray_client(settings) as client:
        record = await call(client, "dispatch_effect", command=["sleep", "60"], timeout_s=1, grace_s=0.2)
    assert record["status"] == "cancelled" and record["cancel_reason"] == "timeout"


async def test_killing_a_worker_node_fails_its_effects_with_node_lost_and_the_flow_policy_applies(cluster, settings):
    doomed = cluster.add_node(**SMALL, resources={"doomed": 1})
    cluster.wait_for_nodes()
    async with ray_client(settings) as client:
        flow = await call(
            client,
            "dispatch_flow",
            background=True,
            steps=[
                {"id": "remote", "command": ["sleep", "300"], "resources": {"doomed": 1}, "grace_s": 0.2},
                {"id": "after", "needs": ["remote"], "command": ["true"]},
            ],
        )
        flow_id = flow["flow_id"]
        retried = await call(
            client,
            "dispatch_effect",
            command=["sleep", "300"],
            resources={"doomed": 1},
            max_attempts=2,
            background=True,
            grace_s=0.2,
        )

        async def remote_running() -> bool:
            polled = await call(client, "poll_flow", flow_id=flow_id)
            return any(s.get("status") == "running" for s in polled["steps"])

        with anyio.fail_after(90):
            while not await remote_running():  # noqa: ASYNC110
                await anyio.sleep(0.1)
            while (await call(client, "poll_effect", effect_id=retried["effect_id"]))["status"] != "running":  # noqa: ASYNC110
                await anyio.sleep(0.1)
        cluster.remove_node(doomed)
        with anyio.fail_after(90):
            while (polled := await call(client, "poll_flow", flow_id=flow_id))["status"] == "running":  # noqa: ASYNC110
                await anyio.sleep(0.2)
        steps = {s["step_id"]: s for s in polled["steps"]}
        remote = await call(client, "poll_effect", effect_id=steps["remote"]["effect_id"])
        with anyio.fail_after(90):
            while (again := await call(client, "poll_effect", effect_id=retried["effect_id"]))["status"] not in ENDED:  # noqa: ASYNC110
                await anyio.sleep(0.2)
    assert polled["status"] == "failed"
    assert remote["status"] == "failed" and remote["error"] == "node_lost", remote
    assert steps["after"]["status"] == "skipped"  # fail_fast: what needed it never runs
    # Retries apply: the second attempt finds no node with `doomed` left, and says so.
    assert again["status"] == "failed" and again["attempt"] == 2 and "doomed" in again["error"], again


async def test_a_sigkilled_server_leaves_no_effect_process_on_the_nodes(cluster, tmp_path):
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    db = tmp_path / "journal.db"
    marker = tmp_path / "pids"
    script = f"sleep 300 & echo $! >> {marker}; setsid sleep 300 & echo $! >> {marker}; echo $$ >> {marker}; wait"
    server = subprocess.Popen(  # noqa: ASYNC220
        [effectd_bin(), "serve", "--db", str(db), "--runner", "ray", "--allow-any-command"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=tmp_path,
    )
    try:
        _send(server, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": _INIT})
        _read(server, 1)
        _send(server, {"jsonrpc": "2.0", "method": "notifications/initialized"})
        arguments = {"command": ["sh", "-c", script], "background": True}
        params = {"name": "dispatch_effect", "arguments": arguments}
        _send(server, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": params})
        _read(server, 2)
        await wait_until(lambda: marker.exists() and len(marker.read_text().split()) == 3, within_s=90)
        pids = [int(p) for p in marker.read_text().split()]
        assert all(pid_alive(p) for p in pids)
    finally:
        server.kill()
        server.wait()
        for pipe in (server.stdin, server.stdout):
            if pipe is not None:
                pipe.close()
    await wait_until(lambda: not any(pid_alive(p) for p in pids), within_s=60)


_INIT = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}


def _send(server: subprocess.Popen[bytes], message: dict[str, Any]) -> None:
    assert server.stdin is not None
    server.stdin.write(json.dumps(message).encode() + b"\n")
    server.stdin.flush()


def _read(server: subprocess.Popen[bytes], wanted: int) -> dict[str, Any]:
    assert server.stdout is not None
    while True:
        line = server.stdout.readline()
        if not line:
            raise AssertionError("the server closed its stdout")
        message = json.loads(line)
        if message.get("id") == wanted:
            return message  # type: ignore[no-any-return]


async def test_recovery_kills_what_a_recorded_effect_left_on_the_nodes_through_the_runner(cluster):
    from effectd.runner.base import RecordedProcess

    effect_id = "eff_leftover_of_a_dead_server"
    env = {**os.environ, "EFFECTD_EFFECT_ID": effect_id}
    left = subprocess.Popen(["sleep", "300"], env=env, start_new_session=True)  # noqa: ASYNC220
    runner = RayRunner(cluster.address)
    try:
        runner.connect()  # already connected: nothing to do, the runner shares this process's Ray
        await runner.kill_leftovers([RecordedProcess(effect_id)])
        # Gone long before its 300 s (the driver may reap it at once: Ray ignores SIGCHLD in it).
        await wait_until(lambda: not pid_alive(left.pid), within_s=30)
    finally:
        left.kill()
        left.wait()
        await runner.aclose()
