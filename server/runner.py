"""Starting, watching, signalling and reaping one effect's process group.

The supervisor talks to a `Runner` and the `ProcessHandle` it returns; nothing above this module
knows the process is local. `LocalRunner` starts every child in its own session (so its process
group can be signalled as a whole), with a parent-death signal so it dies with the server, and
watches the leader's exit through a pidfd, separately from its output pipe (a grandchild that keeps
the pipe open must not hide the exit).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

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


@dataclass(frozen=True)
class Launch:
    """Everything needed to start one process."""

    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: str | None = None
    stdin: bytes | None = None


@dataclass(frozen=True)
class ExitStatus:
    """How the leader process ended: an exit code, or the signal that killed it."""

    exit_code: int | None
    signal: int | None

    @classmethod
    def from_wait_status(cls, status: int) -> ExitStatus:
        if os.WIFSIGNALED(status):
            return cls(None, os.WTERMSIG(status))
        return cls(os.waitstatus_to_exitcode(status), None)


class SpawnError(Exception):
    """Raised when the process could not be started (missing executable, bad cwd, no permission)."""


class ProcessHandle(ABC):
    """One started process group, as the supervisor sees it."""

    pid: int
    start_marker: int | None

    @abstractmethod
    async def read(self) -> bytes:
        """The next chunk of combined stdout and stderr; b"" once every writer has closed the pipe."""

    @abstractmethod
    async def wait(self) -> ExitStatus:
        """Waits for the leader process to exit (not for its output to end)."""

    @abstractmethod
    def signal_group(self, signum: int) -> None:
        """Sends `signum` to every process of the group; a group already gone is not an error."""

    @abstractmethod
    async def wait_group_gone(self, within_s: float) -> bool:
        """Waits until no live process is left in the group; False if some still are after `within_s`."""

    @abstractmethod
    def close(self) -> None:
        """Releases descriptors; the process group must already be gone."""


class Runner(ABC):
    @abstractmethod
    async def start(self, launch: Launch) -> ProcessHandle:
        """Starts the process and returns once it exists; raises SpawnError when it cannot."""


def process_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks after boot (from /proc), or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(stat.rsplit(b")", 1)[1].split()[19])


def _stat_fields(pid: str) -> list[bytes] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except OSError:
        return None


def live_members(pgid: int) -> list[int]:
    """Pids of the processes of group `pgid` that are alive (zombies are dead and not listed)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(entry)
        if fields and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(entry))
    return members


def effect_processes(effect_ids: set[str]) -> dict[str, list[int]]:
    """Live processes whose environment names one of `effect_ids` (EFFECTD_EFFECT_ID=...), by effect:
    how what an effect left behind is found after a crash, whatever its pid or process group.
    One pass over /proc for all of them."""
    found: dict[str, list[int]] = {}
    if not effect_ids:
        return found
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        for variable in environ.split(b"\0"):
            if variable.startswith(b"EFFECTD_EFFECT_ID="):
                effect_id = variable.partition(b"=")[2].decode(errors="replace")
                fields = _stat_fields(entry)
                if effect_id in effect_ids and fields and fields[0] not in (b"Z", b"X"):
                    found.setdefault(effect_id, []).append(int(entry))
                break
    return found


class LocalProcess(ProcessHandle):
    def __init__(self, popen: subprocess.Popen[bytes], output_fd: int) -> None:
        self._popen = popen
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

    def close(self) -> None:
        for fd in (self._output_fd, self._pidfd):
            if fd is not None:
                os.close(fd)
        self._output_fd = self._pidfd = None


class LocalRunner(Runner):
    """Runs processes on this machine."""

    async def start(self, launch: Launch) -> ProcessHandle:
        # Forked from the event loop's thread on purpose: the parent-death signal fires when the
        # thread that forked the child ends, so a worker thread would kill the child with it.
        process = _spawn(launch)
        # Reading /proc/PID/stat waits while the child is still inside exec: off the event loop, and
        # shielded, so a cancellation cannot lose the handle of a process that already exists.
        with anyio.CancelScope(shield=True):
            process.start_marker = await anyio.to_thread.run_sync(process_start_time, process.pid)
        return process


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
    return LocalProcess(popen, read_fd)
