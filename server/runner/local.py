"""The local runner: effects as process groups on this machine.

`LocalRunner` starts every child in its own session (so its process group can be signalled as a
whole), with a parent-death signal so it dies with the server, and watches the leader's exit through
a pidfd, separately from its output pipe (a grandchild that keeps the pipe open must not hide the
exit). It reads the result file the process wrote, and at recovery kills what crashed effects left.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import anyio

from effectd.runner.base import ExitStatus, Launch, ProcessHandle, RecordedProcess, Runner, SpawnError
from effectd.runner.files import RESULT_LIMIT_BYTES, clear_result_file, read_result_file
from effectd.runner.procfs import effect_processes, live_members, process_start_time

log = logging.getLogger("effectd")

_PR_SET_PDEATHSIG = 1
_F_SETPIPE_SZ = 1031
_READ_SIZE = 256 * 1024

_prctl: Any
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: no parent-death signal; start-up recovery still kills leftovers
    _prctl = None


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGKILL this process when the server's thread dies."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


# util-linux's `setpriv --pdeathsig KILL -- argv...` sets the parent-death signal and execs argv in
# the same process. It lets CPython start the child with vfork (no preexec_fn), which costs about
# 0.2 ms of the event loop instead of ~3 ms for a full fork of the server; without it, preexec_fn.
_SETPRIV = shutil.which("setpriv") if _prctl is not None else None


_devnull_fd: int | None = None


def _devnull() -> int:
    """One read-only /dev/null descriptor for every child's stdin (Popen would open one per child)."""
    global _devnull_fd
    if _devnull_fd is None:
        _devnull_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    return _devnull_fd


def _check_executable(argv0: str, env: Mapping[str, str], cwd: str | None) -> None:
    """Refuses a program that cannot be found, as exec itself would (setpriv would only exit 127)."""
    if "/" in argv0:
        path = argv0 if os.path.isabs(argv0) or cwd is None else os.path.join(cwd, argv0)
        found = os.access(path, os.X_OK) and not os.path.isdir(path)
    else:
        found = shutil.which(argv0, path=env.get("PATH", os.defpath)) is not None
    if not found:
        raise SpawnError(f"could not start {argv0!r}: no such executable file (PATH {env.get('PATH', os.defpath)!r})")


class LocalProcess(ProcessHandle):
    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        output_fd: int,
        result_file: str | None = None,
        result_limit_bytes: int = RESULT_LIMIT_BYTES,
    ) -> None:
        self._popen = popen
        self._result_file = result_file
        self._result_limit = result_limit_bytes
        self.pid = popen.pid
        self.start_marker: int | None = None
        self._output_fd: int | None = output_fd
        self._exit: ExitStatus | None = None
        self._watching = False
        self._watch_ended = anyio.Event()
        self._group_gone = False
        try:
            self._pidfd: int | None = os.pidfd_open(popen.pid)
        except (AttributeError, OSError):
            self._pidfd = None

    async def read(self) -> bytes:
        while self._output_fd is not None:
            try:
                return os.read(self._output_fd, _READ_SIZE)
            except BlockingIOError:
                await anyio.wait_readable(self._output_fd)
        return b""

    def _reap(self) -> ExitStatus | None:
        if self._exit is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: the exit status is lost, only the fact is known
                self._exit = ExitStatus(None, None)
            else:
                if pid == 0:
                    return None
                self._exit = ExitStatus.from_wait_status(status)
            self._popen.returncode = self._exit.exit_code if self._exit.exit_code is not None else -1
        return self._exit

    async def wait(self) -> ExitStatus:
        # Any number of tasks may wait: one watches the pidfd, the others wait for it to report.
        while (status := self._reap()) is None:
            if self._watching:
                await self._watch_ended.wait()
                continue
            self._watching = True
            try:
                if self._pidfd is not None:
                    await anyio.wait_readable(self._pidfd)
                else:
                    await anyio.sleep(0.01)
            finally:
                self._watching = False
                ended, self._watch_ended = self._watch_ended, anyio.Event()
                ended.set()
        return status

    def signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    async def wait_group_gone(self, within_s: float) -> bool:
        deadline = time.monotonic() + within_s
        if self._reap() is None and within_s > 0:
            # The leader's exit is an event (pidfd): wait for it first; the rest of the group, which
            # usually goes with it, is then checked by polling (no event tells of other processes).
            with anyio.move_on_after(within_s):
                await self.wait()
        delay = 0.002
        while True:
            self._reap()
            if self._group_gone or (self._exit is not None and not live_members(self.pid)):
                # Once empty, a group stays empty: its id cannot be given to a new process while
                # any member (even a zombie) holds it, and nothing joins a group from outside.
                self._group_gone = True
                return True
            if time.monotonic() >= deadline:
                return False
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def read_result(self) -> Any:
        # Most effects write no result: an lstat (which never blocks on what is there) says so at once.
        # A file that is there is opened without blocking or following links, and read off the loop.
        if self._result_file is None or not os.path.lexists(self._result_file):  # noqa: ASYNC240 - an lstat
            return None
        return await anyio.to_thread.run_sync(read_result_file, self._result_file, self._result_limit)

    def close(self) -> None:
        for fd in (self._output_fd, self._pidfd):
            if fd is not None:
                os.close(fd)
        self._output_fd = self._pidfd = None


class LocalRunner(Runner):
    """Runs processes on this machine."""

    async def start(self, launch: Launch) -> ProcessHandle:
        if launch.result_file is not None:
            await clear_result_file(launch.result_file)  # an earlier attempt's result is not this one's
        # Forked from the event loop's thread on purpose: the parent-death signal fires when the
        # thread that forked the child ends, so a worker thread would kill the child with it.
        process = _spawn(launch)
        # Reading /proc/PID/stat waits while the child is still inside exec: off the event loop, and
        # shielded, so a cancellation cannot lose the handle of a process that already exists.
        with anyio.CancelScope(shield=True):
            process.start_marker = await anyio.to_thread.run_sync(process_start_time, process.pid)
        return process

    async def kill_leftovers(self, processes: Sequence[RecordedProcess]) -> None:
        if not processes:
            return
        await anyio.to_thread.run_sync(_kill_leftovers, list(processes))


def _kill_leftovers(processes: list[RecordedProcess]) -> None:
    """One pass over /proc for all of them: the recorded leader if its start time still matches (a
    reused pid is never killed), and every process whose environment names one of the effects."""
    left = effect_processes({p.effect_id for p in processes})
    for recorded in processes:
        pids = set(left.get(recorded.effect_id, ()))
        if recorded.pid and recorded.start_marker and process_start_time(recorded.pid) == recorded.start_marker:
            pids.add(recorded.pid)
        for pid in pids:
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _spawn(launch: Launch) -> LocalProcess:
    """Starts the process in its own session with the parent-death signal; its output into one pipe."""
    if launch.cwd is not None and not os.path.isdir(launch.cwd):
        raise SpawnError(f"cwd {launch.cwd!r} does not exist")
    argv = list(launch.argv)
    preexec: Callable[[], None] | None = _die_with_parent
    if _SETPRIV is not None:
        _check_executable(argv[0], launch.env, launch.cwd)
        argv = [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]
        preexec = None
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    stdin_fd: int | None = None
    try:
        try:
            fcntl.fcntl(read_fd, _F_SETPIPE_SZ, 1024 * 1024)
        except OSError:
            pass
        if launch.stdin is not None:
            stdin_fd = os.memfd_create("effectd-stdin", os.MFD_CLOEXEC)
            os.write(stdin_fd, launch.stdin)
            os.lseek(stdin_fd, 0, os.SEEK_SET)
        try:
            popen = subprocess.Popen(
                argv,
                stdin=stdin_fd if stdin_fd is not None else _devnull(),
                stdout=write_fd,
                stderr=write_fd,
                cwd=launch.cwd,
                env=dict(launch.env),
                start_new_session=True,
                preexec_fn=preexec,
                close_fds=True,
            )
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if exc.errno == errno.ENOENT and launch.cwd and not Path(launch.cwd).is_dir():
                raise SpawnError(f"cwd {launch.cwd!r} does not exist") from exc
            raise SpawnError(f"could not start {launch.argv[0]!r}: {reason}") from exc
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
        if stdin_fd is not None:
            os.close(stdin_fd)
    os.set_blocking(read_fd, False)
    return LocalProcess(popen, read_fd, launch.result_file, launch.result_limit_bytes)
