"""The Ray runner: effects run as processes on the nodes of a Ray cluster.

One `NodeExecutor` actor per node (async, high `max_concurrency`, pinned to its node) owns the
processes there; this module is the server's side of it. Placement: an effect goes to a live node
whose Ray resources cover the effect's `resources` (the node with fewest of our effects first).
Output comes back while the process runs, one chunk per actor call, and the supervisor writes it to
the output log as for a local process. When the actor or its node dies every call fails with a Ray
error: the process is then lost (`ExitStatus.error == "node_lost"`), its reads end, and nothing waits
for it any more.

Ray is imported here only: the default install never loads this module.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import anyio

from effectd.config.settings import RAY_MISSING
from effectd.errors import ConfigError

try:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    HAVE_RAY = True
except ImportError:  # the optional extra `effectd[ray]` is not installed: RayRunner says what to install
    HAVE_RAY = False

from effectd.runner.base import ExitStatus, Launch, ProcessHandle, RecordedProcess, Runner, SpawnError
from effectd.runner.ray_node import NodeExecutor

log = logging.getLogger("effectd")

NODE_LOST = "node_lost"
NODES_FRESH_S = 2.0  # how long a listing of the cluster's nodes is trusted
MAX_CONCURRENCY = 10_000  # calls an executor serves at once (several per running effect)
# A small local Ray for a server started without an address: no dashboard, a small object store.
_LOCAL_OBJECT_STORE = 80 * 1024 * 1024
# Ray's backstop for a worker that dies: the raylet adopts and kills what its processes left.
_SUBREAPER_ENV = "RAY_kill_child_processes_on_worker_exit_with_raylet_subreaper"

_executor_class: Any = None


def _executor_actor() -> Any:
    """NodeExecutor as a Ray actor class (made once, when Ray is there)."""
    global _executor_class
    if _executor_class is None:
        # (unused-ignore: without Ray installed, `ray` is Any and the overload cannot mismatch)
        remote = ray.remote(  # type: ignore[call-overload,unused-ignore]
            num_cpus=0, max_concurrency=MAX_CONCURRENCY, max_restarts=0
        )
        _executor_class = remote(NodeExecutor)
    return _executor_class


class _Lost(Exception):
    pass


class RayProcess(ProcessHandle):
    """One effect's process group on a node, reached through that node's executor."""

    def __init__(self, runner: RayRunner, node_id: str, actor: Any, key: str, started: Mapping[str, Any]) -> None:
        self._runner = runner
        self._node_id = node_id
        self._actor = actor
        self._key = key
        self.pid = int(started["pid"])
        self.start_marker = started.get("start_marker")
        self.node = started.get("node")
        self.lost = False
        self._exit: ExitStatus | None = None
        self._closed = False

    async def _call(self, method: str, *args: Any) -> Any:
        if self.lost:
            raise _Lost
        try:
            return await getattr(self._actor, method).remote(self._key, *args)
        except ray.exceptions.RayError as exc:
            if not self.lost:
                log.warning("effect process %s on %s: node lost (%s)", self.pid, self.node, type(exc).__name__)
            self.lost = True
            self._runner.forget(self._node_id, self._actor)
            raise _Lost from exc

    async def read(self) -> bytes:
        while True:
            try:
                chunk = await self._call("read")
            except _Lost:
                return b""
            if chunk is not None:
                return bytes(chunk)

    async def wait(self) -> ExitStatus:
        if self._exit is None:
            try:
                code, signum = await self._call("wait")
                self._exit = ExitStatus(code, signum)
            except _Lost:
                self._exit = ExitStatus(None, None, NODE_LOST)
        return self._exit

    def signal_group(self, signum: int) -> None:
        if not self.lost:
            self._actor.signal.remote(self._key, signum)  # ordered before this caller's later calls

    async def wait_group_gone(self, within_s: float) -> bool:
        try:
            return bool(await self._call("wait_group_gone", within_s))
        except _Lost:
            return True  # its node is gone, and its processes with it (or Ray's cleanup ends them)

    async def read_result(self) -> Any:
        try:
            return await self._call("read_result")
        except _Lost:
            return None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._runner.release(self._node_id)
            if not self.lost:
                self._actor.close.remote(self._key)


class RayRunner(Runner):
    """Runs processes on the nodes of a Ray cluster (`address`), or of a local Ray it starts itself."""

    def __init__(self, address: str | None = None) -> None:
        if not HAVE_RAY:
            raise ConfigError(RAY_MISSING)
        self.address = address
        self.started_ray = False
        self._executors: dict[str, Any] = {}
        self._running: dict[str, int] = {}
        self._nodes: list[dict[str, Any]] = []
        self._nodes_at = -NODES_FRESH_S

    def connect(self) -> None:
        """Joins the cluster at `address`, or starts a local Ray when there is none (and stops it on close)."""
        if ray.is_initialized():
            return
        # Ray's backstop for the raylet a local start makes; the flag also makes Ray ignore SIGCHLD in
        # the process that reads it, this server: its own children would lose their exit status. So it
        # is set for the start only, and SIGCHLD gets its default disposition back.
        added = self.address is None and _SUBREAPER_ENV not in os.environ
        if added:
            os.environ[_SUBREAPER_ENV] = "true"
        try:
            if self.address is None:
                ray.init(
                    address="local",
                    num_cpus=os.cpu_count() or 1,
                    include_dashboard=False,
                    object_store_memory=_LOCAL_OBJECT_STORE,
                    log_to_driver=False,
                )
                self.started_ray = True
            else:
                ray.init(address=self.address, log_to_driver=False)
        finally:
            if added:
                del os.environ[_SUBREAPER_ENV]
            ctypes.CDLL(None).signal(int(signal.SIGCHLD), int(signal.SIG_DFL))

    async def aclose(self) -> None:
        for actor in self._executors.values():
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._executors.clear()
        if self.started_ray and ray.is_initialized():
            await anyio.to_thread.run_sync(ray.shutdown)

    # --- placement --------------------------------------------------------------------------------

    async def nodes(self, fresh: bool = False) -> list[dict[str, Any]]:
        """The live nodes of the cluster (Ray's `ray.nodes()` rows), at most NODES_FRESH_S old."""
        if fresh or time.monotonic() - self._nodes_at > NODES_FRESH_S:
            rows = await anyio.to_thread.run_sync(ray.nodes)
            self._nodes = [row for row in rows if row.get("Alive")]
            self._nodes_at = time.monotonic()
        return self._nodes

    async def _place(self, resources: Mapping[str, float] | None) -> str:
        wanted = dict(resources or {})
        for fresh in (False, True):
            fits = [
                str(row["NodeID"])
                for row in await self.nodes(fresh)
                if all(row.get("Resources", {}).get(name, 0) >= amount for name, amount in wanted.items())
            ]
            if fits:
                return min(fits, key=lambda node: self._running.get(node, 0))
        have = sorted({name for row in self._nodes for name in row.get("Resources", {}) if ":" not in name})
        raise SpawnError(
            f"no live Ray node has the resources {wanted}; the cluster's nodes offer: {', '.join(have) or 'nothing'}"
        )

    def executor(self, node_id: str) -> Any:
        """The executor actor of a node, made the first time (it runs nowhere else)."""
        actor = self._executors.get(node_id)
        if actor is None:
            strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
            actor = _executor_actor().options(scheduling_strategy=strategy).remote()
            self._executors[node_id] = actor
        return actor

    def forget(self, node_id: str, actor: Any) -> None:
        """A dead executor is never asked again: the next effect for its node gets a new one (or none)."""
        if self._executors.get(node_id) is actor:
            del self._executors[node_id]
            self._nodes_at = -NODES_FRESH_S

    def release(self, node_id: str) -> None:
        self._running[node_id] = max(0, self._running.get(node_id, 0) - 1)

    # --- the Runner interface ---------------------------------------------------------------------

    def refuse_limits(self, limits: Mapping[str, float]) -> str | None:
        if not limits:
            return None
        return (
            "`limits` are not enforced on the Ray runner (an effect's cgroups are made by the local runner only): "
            "dispatch without `limits` (and without [limits] in the config), or run `effectd serve --runner local`"
        )

    async def start(self, launch: Launch) -> ProcessHandle:
        for _ in range(2):  # a node that died since it was listed: once more, on a live one
            node_id = await self._place(launch.resources)
            actor = self.executor(node_id)
            key = uuid.uuid4().hex
            try:
                with anyio.CancelScope(shield=True):  # a process that exists is never left without a handle
                    started = await actor.start.remote(key, launch)
            except ray.exceptions.RayError as exc:
                log.warning("Ray node %s could not start an effect: %s", node_id, type(exc).__name__)
                self.forget(node_id, actor)
                continue
            if "error" in started:
                raise SpawnError(started["error"])
            self._running[node_id] = self._running.get(node_id, 0) + 1
            return RayProcess(self, node_id, actor, key, started)
        raise SpawnError(f"{NODE_LOST}: the Ray node chosen for the effect died before it started")

    async def kill_leftovers(self, processes: Sequence[RecordedProcess]) -> None:
        """On every live node: what these effects left there (by their cgroup and environment marker)."""
        if not processes:
            return
        recorded = list(processes)
        calls = [self.executor(str(row["NodeID"])).kill_leftovers.remote(recorded) for row in await self.nodes(True)]
        for call in calls:
            try:
                await call
            except ray.exceptions.RayError as exc:
                log.warning("leftovers on a Ray node could not be killed: %s", exc)
