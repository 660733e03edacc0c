"""What runs on each Ray node: an async actor that owns its effects' processes, with the local runner's code.

`NodeExecutor` is made a Ray actor by `effectd.runner.ray_runner` (this module never imports Ray at its
top, so the default install does not need it). Each call names one process by a key the server chose;
the actor runs it exactly as `LocalRunner` does on one machine (own session, parent-death signal,
pidfd exit watch, containment, reaping), so a cancel is a signal to the whole group sent on the node
itself: nothing depends on Ray's own task cancellation, which leaves grandchildren alive.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import replace
from typing import Any

import anyio

from effectd.runner.base import Launch, RecordedProcess, SpawnError
from effectd.runner.cgroups import Cgroups
from effectd.runner.local import LocalProcess, LocalRunner

# A read that finds no output for this long answers None ("nothing yet"): no call waits unbounded, so
# the actor never holds a call for a process the server stopped watching.
READ_WAIT_S = 5.0
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37


class NodeExecutor:
    """The processes of effects on one node (a Ray actor; every method is a coroutine of its loop)."""

    def __init__(self) -> None:
        # Ray workers may ignore SIGCHLD (set in C, unseen by signal.getsignal), which makes the kernel
        # reap children at once: no exit status would be left. The default keeps them until waited for.
        # The actor's methods run outside the main thread, where signal.signal refuses: libc's signal().
        ctypes.CDLL(None).signal(int(signal.SIGCHLD), int(signal.SIG_DFL))
        self._guard = _start_guard(Cgroups.find())
        self._runner = LocalRunner()
        self._processes: dict[str, LocalProcess] = {}
        self._busy: dict[str, int] = {}  # calls under way per process: it is closed after the last one
        self._closing: set[str] = set()
        self._result_files: dict[str, str] = {}
        self._effects: dict[str, str] = {}  # the effect id of each process (what the guard knows it by)
        self._results = tempfile.mkdtemp(prefix="effectd-results-")
        self.node = f"ray:{_node_id()}@{socket.gethostname()}"

    async def info(self) -> dict[str, Any]:
        return {"node": self.node, "pid": os.getpid()}

    async def start(self, key: str, launch: Launch) -> dict[str, Any]:
        """Starts the process; its result file is one on this node (the server's path may not exist here)."""
        result_file = os.path.join(self._results, f"{launch.effect_id or key}.json")
        env = {**launch.env, "EFFECTD_RESULT_FILE": result_file}
        try:
            process = await self._runner.start(replace(launch, env=env, result_file=result_file))
        except SpawnError as exc:
            return {"error": str(exc)}
        assert isinstance(process, LocalProcess)
        self._processes[key] = process
        self._result_files[key] = result_file
        self._effects[key] = launch.effect_id or key
        self._tell_guard(f"+{self._effects[key]}")
        return {"pid": process.pid, "start_marker": process.start_marker, "node": self.node}

    async def read(self, key: str) -> bytes | None:
        """The next chunk of output; b"" at its end; None when none came within READ_WAIT_S."""
        process = self._enter(key)
        if process is None:
            return b""
        try:
            with anyio.move_on_after(READ_WAIT_S):
                return await process.read()
            return None
        finally:
            self._leave(key)

    async def wait(self, key: str) -> tuple[int | None, int | None]:
        process = self._enter(key)
        if process is None:
            return None, None
        try:
            status = await process.wait()
            return status.exit_code, status.signal
        finally:
            self._leave(key)

    async def signal(self, key: str, signum: int) -> None:
        process = self._processes.get(key)
        if process is not None:
            process.signal_group(signum)

    async def wait_group_gone(self, key: str, within_s: float) -> bool:
        process = self._enter(key)
        if process is None:
            return True
        try:
            return await process.wait_group_gone(within_s)
        finally:
            self._leave(key)

    async def read_result(self, key: str) -> Any:
        process = self._enter(key)
        if process is None:
            return None
        try:
            return await process.read_result()
        finally:
            self._leave(key)

    async def close(self, key: str) -> None:
        """Kills what is left of the process group, then releases it (once no call uses it any more)."""
        process = self._processes.get(key)
        if process is None:
            return
        if not await process.wait_group_gone(0):
            process.signal_group(signal.SIGKILL)
            await process.wait_group_gone(3.0)
        self._closing.add(key)
        if not self._busy.get(key):
            self._release(key)

    async def kill_leftovers(self, processes: Sequence[RecordedProcess]) -> None:
        await self._runner.kill_leftovers(processes)

    async def running(self) -> int:
        return len(self._processes)

    def _enter(self, key: str) -> LocalProcess | None:
        if key in self._closing:
            return None
        process = self._processes.get(key)
        if process is not None:
            self._busy[key] = self._busy.get(key, 0) + 1
        return process

    def _leave(self, key: str) -> None:
        self._busy[key] -= 1
        if not self._busy[key] and key in self._closing:
            self._release(key)

    def _release(self, key: str) -> None:
        self._closing.discard(key)
        self._busy.pop(key, None)
        process = self._processes.pop(key, None)
        if process is not None:
            process.close()
        if key in self._effects:
            self._tell_guard(f"-{self._effects.pop(key)}")
        with suppress(OSError, KeyError):
            os.unlink(self._result_files.pop(key))

    def _tell_guard(self, line: str) -> None:
        if self._guard.stdin is not None:
            with suppress(OSError):
                self._guard.stdin.write(line.encode() + b"\n")
                self._guard.stdin.flush()


def _start_guard(cgroups: Cgroups | None) -> subprocess.Popen[bytes]:
    """Starts the guard (`effectd.runner.ray_guard`) as a grandchild in a session of its own, before
    this process becomes a subreaper: Ray kills a dead worker's children, and the guard must outlive
    this worker to do its work. Its stdin, a pipe this process writes to, is the one tie to it."""
    root = str(cgroups.root) if cgroups is not None else ""
    libc = ctypes.CDLL(None, use_errno=True)
    was = ctypes.c_int(0)
    libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(was), 0, 0, 0)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)  # orphaned, the guard is nobody's child here
    starter = subprocess.Popen(
        ["/bin/sh", "-c", 'exec 3<&0; "$0" -m effectd.runner.ray_guard "$1" <&3 3<&- &', sys.executable, root],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )
    starter.wait()  # the shell only starts the guard in the background (with its own stdin, not /dev/null)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, was.value, 0, 0, 0)
    return starter


def _node_id() -> str:
    try:
        import ray
    except ImportError:  # not in a Ray worker after all
        return "unknown"
    return str(ray.get_runtime_context().get_node_id())
