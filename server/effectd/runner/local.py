"""The local runner: effects as processes on this machine, each effect contained as a whole.

`LocalRunner` starts every child in its own session, with a parent-death signal so it dies with the
server, and watches the leader's exit through a pidfd, separately from its output pipe (a grandchild
that keeps the pipe open must not hide the exit). Every process the effect starts is contained
(`effectd.runner.contain`): in a cgroup of its own where one is writable, else found through the
subreaper and the environment marker. It reads the result file the process wrote, and at start kills
whatever any recorded effect left.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import errno
import fcntl
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import aclosing, suppress
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from effectd.runner import cgroups, controllers
from effectd.runner.base import ExitStatus, Launch, ProcessHandle, RecordedProcess, Runner, SpawnError, Usage
from effectd.runner.cgroups import Cgroups
from effectd.runner.contain import MODES, CgroupScope, GroupScope, TreeScope, kill_leftovers, leftover_ids
from effectd.runner.controllers import Controllers, Limited, LimitError
from effectd.runner.files import RESULT_LIMIT_BYTES, clear_result_file, read_result_file
from effectd.runner.keeper import KEEPER
from effectd.runner.procfs import process_start_time
from effectd.runner.proxy import Listening, Proxies
from effectd.runner.readers import PipeReader, readable
from effectd.runner.reaper import REAPER, ReapTicker
from effectd.runner.sandbox import Prepared, Sandboxes
from effectd.runner.spawn import spawn as posix_spawn

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

# Holds a child until the runner has moved it into its cgroup, so not one of its processes starts
# outside it: the shell reads a line from the gate (its stderr, a pipe the runner writes to once the
# move is done), points stderr back at the output, and execs the command in the same process.
_GATE = ["/bin/sh", "-c", 'read _ <&2; exec 2>&1; exec "$@"', "sh"]
# How often a watcher reaps the effects' orphans that died while the effect runs.
REAP_EVERY_S = 1.0
REAP_TICKER = ReapTicker(REAPER, REAP_EVERY_S)

SPAWNERS = 4
SPAWNER = concurrent.futures.ThreadPoolExecutor(SPAWNERS, thread_name_prefix="effectd-spawn")
"""The threads every effect is started from, so that the event loop does not wait out each start (a
third more effects per second through stdio than starting on the loop). Several, so that a burst of
starts does not queue behind one: each `posix_spawn` lets go of the GIL for its vfork and exec, and
the starts overlap (a fan-out of 64 effects over stdio: its latest start 110 -> 65 ms after its
dispatch returned, median of 7 rounds; 8 threads did no better than 4, 2 worse). The parent-death
signal fires when the thread that started the child ends, so these threads must live as long as the
server: an executor's workers do, where anyio's worker threads retire when idle and would take
their children with them."""


_HOST = socket.gethostname()
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
        pid: int,
        output_fd: int,
        result_file: str | None = None,
        result_limit_bytes: int = RESULT_LIMIT_BYTES,
        popen: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self._popen = popen  # when started by Popen: told the exit, so it never warns of a running child
        self.scope: GroupScope = GroupScope(pid)
        self._result_file = result_file
        self._result_limit = result_limit_bytes
        self.pid = pid
        self.start_marker: int | None = None
        self.node = _HOST
        self._output_fd: int | None = output_fd
        self._reader: PipeReader | None = None  # reads `_output_fd`, registered with the event loop once
        self._exit: ExitStatus | None = None
        self._watching = False
        self._watch_ended = anyio.Event()
        self._group_gone = False
        self._stdin_fd: int | None = None  # the write end of a streamed stdin (Launch.stdin_source)
        self.limited: Limited | None = None  # the cgroups that enforce its `limits`, if it has any
        self.memory_v2 = False  # its v2 cgroup has the memory controller (it tells the peak)
        self._stdin_source: AsyncGenerator[bytes, None] | None = None
        self.sandbox: tuple[Prepared, Listening | None] | None = None  # its private folder, its proxy listener
        self.kept: str | None = None  # the effect the keeper knows this process by, until it is gone
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self._pidfd = None

    async def read(self) -> bytes:
        if self._output_fd is None:
            return b""
        if self._reader is None:
            self._reader = PipeReader(self._output_fd, _READ_SIZE, _READ_SIZE)
        return await self._reader.read()

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
            REAPER.leaders.discard(self.pid)
            if self._popen is not None:
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
                    with REAP_TICKER.waiting():  # the orphans that die meanwhile are reaped every REAP_EVERY_S
                        await readable(self._pidfd)
                else:
                    await anyio.sleep(0.01)
                REAPER.reap(every_s=REAP_EVERY_S / 2)  # the orphans that died meanwhile
            finally:
                self._watching = False
                ended, self._watch_ended = self._watch_ended, anyio.Event()
                ended.set()
        return status

    def signal_group(self, signum: int) -> None:
        self.scope.signal(signum)

    async def _alive(self) -> bool:
        if self.scope.blocking:
            return await anyio.to_thread.run_sync(self.scope.alive, self._exit is None)
        return self.scope.alive(self._exit is None)

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
            if self._group_gone or (self._exit is not None and not await self._alive()):
                # Once empty, an effect stays empty: nothing joins a cgroup or a process group from
                # outside, and with every process gone none is left to fork.
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

    async def feed_stdin(self) -> None:
        fd, source = self._stdin_fd, self._stdin_source
        if fd is None or source is None:
            return
        try:
            async with aclosing(source):
                async for chunk in source:
                    view = memoryview(chunk)
                    while view:
                        try:
                            view = view[os.write(fd, view) :]
                        except BlockingIOError:
                            await anyio.wait_writable(fd)
        except OSError as exc:  # mostly EPIPE: the process exited or closed its stdin, the rest is not wanted
            log.debug("process %s: its stdin feed ended: %s", self.pid, exc)
        finally:
            if self._stdin_fd is not None:
                os.close(self._stdin_fd)  # EOF for the reader
                self._stdin_fd = None

    def usage(self) -> Usage:
        if self.limited is not None:
            return self.limited.usage()
        if isinstance(self.scope, CgroupScope) and self.memory_v2:  # a v2 cgroup with memory: its peak
            return controllers.read_usage(self.scope.cgroup)
        return Usage()

    def close(self) -> None:
        if self._group_gone:
            if self.kept is not None:
                KEEPER.forget(self.kept)
                self.kept = None
            cgroups_of = [self.scope.cgroup] if isinstance(self.scope, CgroupScope) else []
            cgroups_of += self.limited.v1 if self.limited is not None else []
            if cgroups_of:  # removed off the event loop; a retry of the effect waits for it
                removed = SPAWNER.submit(_close_scope, self.scope, self.limited)
                for cgroup in cgroups_of:
                    _removing[cgroup] = removed
                    removed.add_done_callback(partial(_removed, cgroup))
            else:
                self.scope.close()
        if self._reader is not None:
            self._reader.close()  # unregistered before its fd closes
            self._reader = None
        for fd in (self._output_fd, self._pidfd, self._stdin_fd):
            if fd is not None:
                os.close(fd)
        self._output_fd = self._pidfd = self._stdin_fd = None
        if self.sandbox is not None:
            SPAWNER.submit(_close_sandbox, *self.sandbox)  # a private folder of any size: off the event loop
            self.sandbox = None


class LocalRunner(Runner):
    """Runs processes on this machine.

    `containment` is "cgroup" (a cgroup per effect where one is writable, else "tree"), "tree" (the
    subreaper and the environment marker) or "group" (the leader's process group only: no
    containment, for the benchmark's baseline). `controllers`: where each of an effect's `limits` is
    enforced (default: found on this host, `Controllers.find`)."""

    def __init__(
        self, containment: str = "cgroup", controllers: Controllers | None = None, *, bwrap: str = "bwrap"
    ) -> None:
        if containment not in MODES:
            raise ValueError(f"containment must be one of {', '.join(MODES)}, not {containment!r}")
        self.containment = containment
        gate_usable = os.access(_GATE[0], os.X_OK)
        self._cgroups = Cgroups.find() if containment == "cgroup" and gate_usable else None
        if self._cgroups is None and containment == "cgroup":
            self.containment = "tree"
        if containment != "group":
            REAPER.become_subreaper()
        if self._cgroups is not None:
            REAPER.cgroup_prefixes.add(self._cgroups.prefix)
        self.controllers = controllers or Controllers.find(self.cgroup_root)
        self._sandboxes = Sandboxes(bwrap)
        self._proxies = Proxies()

    def sandbox_problem(self) -> str | None:
        return self._sandboxes.problem()

    async def aclose(self) -> None:
        self._proxies.stop()

    @property
    def cgroup_root(self) -> Path | None:
        """The cgroup under which each effect gets its own, or None (no writable cgroup, or not asked)."""
        return self._cgroups.root if self._cgroups is not None else None

    def refuse_limits(self, limits: Mapping[str, float]) -> str | None:
        return self.controllers.refusal(limits)

    async def start(self, launch: Launch) -> ProcessHandle:
        effect_id = launch.effect_id or launch.env.get("EFFECTD_EFFECT_ID")
        try:
            # Shielded: a cancellation cannot lose the handle of a process that already exists.
            with anyio.CancelScope(shield=True):
                started = SPAWNER.submit(self._spawn_known, launch, effect_id)
                process, cgroup = await asyncio.wrap_future(started)
        except _NotCleared:  # a directory (or worse) where the result goes: removed off the thread, then again
            assert launch.result_file is not None
            await clear_result_file(launch.result_file)
            with anyio.CancelScope(shield=True):
                started = SPAWNER.submit(self._spawn_known, launch, effect_id, True)
                process, cgroup = await asyncio.wrap_future(started)
        if cgroup is not None:
            process.scope = CgroupScope(process.pid, cgroup)
        elif self.containment != "group" and effect_id:
            process.scope = TreeScope(process.pid, effect_id)
        return process

    def _spawn_known(
        self, launch: Launch, effect_id: str | None, cleared: bool = False
    ) -> tuple[LocalProcess, Path | None]:
        """On a spawner's thread: removes an earlier attempt's result file (an earlier attempt's result
        is not this one's), makes the effect's cgroup, starts the process (held at its gate when
        there is a cgroup), makes it known to the reaper, moves it into its cgroup and lets it go on.
        Returns it with the cgroup it is in (None: none could be made or entered). With `limits`, the
        cgroups that enforce them are made with the limits written in before the process starts, and
        it is moved into them at its gate: it is never let go without them (SpawnError instead).
        Raises _NotCleared, having started nothing, when what is at the result file's path is not
        removed by one unlink.

        Moving a process into a cgroup can take the kernel milliseconds, and reading its start time
        waits while it is inside exec: here, a spawner's thread waits, not the event loop (which would
        otherwise hop to a worker thread for it: a fan-out of 64 ended 0.9 -> 0.83 s, median of 8)."""
        if launch.result_file is not None and not cleared:
            try:
                os.unlink(launch.result_file)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise _NotCleared from exc
        cgroup = None
        if effect_id:
            earlier = [self._cgroups.path(effect_id)] if self._cgroups is not None else []
            earlier += [root / effect_id for root in self.controllers.v1_roots]
            for path in earlier:
                if path is not None and (removal := _removing.get(path)) is not None:
                    removal.result()  # an earlier attempt's cgroup, still being removed
        if self._cgroups is not None and effect_id:
            cgroup = self._cgroups.create(effect_id)
        # --- limits: the effect's limit cgroups, limits written in (see runner/controllers.py) ---
        limited = None
        sandbox: tuple[Prepared, Listening | None] | None = None
        try:
            if launch.limits:
                if not effect_id:
                    raise SpawnError("`limits` need the effect's id: its cgroups are named after it")
                try:
                    limited = self.controllers.make(effect_id, launch.limits, cgroup)
                except LimitError as exc:
                    raise SpawnError(str(exc)) from exc
            if launch.sandbox is not None:
                launch, sandbox = self._sandboxed(launch, effect_id)
            with REAPER.lock.starting():  # a reaper pass never sees this leader before it is known
                process, gate = _spawn(launch, gated=cgroup is not None or limited is not None)
                REAPER.leaders.add(process.pid)
                if self.containment != "group":
                    REAPER.sessions.add(process.pid)
            process.sandbox = sandbox
        except BaseException:
            if cgroup is not None:
                cgroups.remove(cgroup)
            if limited is not None:
                controllers.remove(limited.v1)
            if sandbox is not None:
                _close_sandbox(*sandbox)
            raise
        process.limited = limited
        if self.containment != "group" and effect_id:  # before the gate opens: no process of it is unknown
            kept = ([cgroup] if cgroup is not None else []) + (limited.v1 if limited is not None else [])
            KEEPER.watch(effect_id, process.pid, kept)
            process.kept = effect_id
        memory = self.controllers.places.get("memory_mb")
        process.memory_v2 = memory is not None and memory.version == 2
        try:
            entered, process.start_marker = _enter(process.pid, cgroup, gate, limited)
        except SpawnError:  # killed at its gate, never run: nothing of it is left
            _reap_unstarted(process)
            if process.kept is not None:
                KEEPER.forget(process.kept)
            if cgroup is not None:
                cgroups.remove(cgroup)
            controllers.remove(limited.v1 if limited is not None else [])
            raise
        if cgroup is not None and not entered:
            cgroups.remove(cgroup)
            cgroup = None
        return process, cgroup

    def _sandboxed(self, launch: Launch, effect_id: str | None) -> tuple[Launch, tuple[Prepared, Listening | None]]:
        """The launch wrapped in its sandbox (its private folder made, its proxy listening), checked first
        as the bare command would be: a missing program fails the same way, before any folder is made."""
        assert launch.sandbox is not None
        _check_executable(launch.argv[0], launch.env, launch.cwd)
        if launch.cwd is not None and not os.path.isdir(launch.cwd):
            raise SpawnError(f"cwd {launch.cwd!r} does not exist")
        try:
            prepared = self._sandboxes.prepare(
                launch.sandbox, launch.argv, dict(launch.env), launch.cwd, launch.result_file, effect_id
            )
        except (OSError, RuntimeError) as exc:
            raise SpawnError(f"could not make the effect's sandbox: {exc}") from exc
        listening = None
        try:
            if prepared.proxy_socket is not None:
                listening = self._proxies.open(prepared.proxy_socket, launch.sandbox.allow)
        except BaseException:
            prepared.close()
            raise
        wrapped = replace(launch, argv=prepared.argv, env=prepared.env, result_file=prepared.result_file)
        return wrapped, (prepared, listening)

    async def leftover_ids(self) -> set[str] | None:
        return await anyio.to_thread.run_sync(leftover_ids, self.cgroup_root, self.controllers.v1_roots)

    async def kill_leftovers(self, processes: Sequence[RecordedProcess]) -> None:
        if not processes:
            return
        await anyio.to_thread.run_sync(kill_leftovers, list(processes), self.cgroup_root, self.controllers.v1_roots)


_removing: dict[Path, concurrent.futures.Future[None]] = {}
"""The effects' cgroups being removed on a spawner's thread. A retry of the effect, which makes its
cgroup again, waits for the removal first: the removal was queued before the retry's start, so a
spawner took it first and it is under way or done (the executor's queue is first in, first out)."""


def _removed(cgroup: Path, removal: concurrent.futures.Future[None]) -> None:
    if _removing.get(cgroup) is removal:
        del _removing[cgroup]


class _NotCleared(Exception):
    """What is at the result file's path needs more than an unlink (a directory tree, say)."""


def _close_sandbox(prepared: Prepared, listening: Listening | None) -> None:
    """Stops the effect's proxy listener and removes its private folder (its TMPDIR and result folder)."""
    try:
        if listening is not None:
            listening.close()
    finally:
        prepared.close()


def _close_scope(scope: GroupScope, limited: Limited | None = None) -> None:
    """On a spawner's thread: the effect's cgroups are removed there (a rmdir in cgroupfs takes the
    kernel a third of a millisecond), not on the event loop."""
    try:
        scope.close()
        if limited is not None:
            controllers.remove(limited.v1)
    except Exception:
        log.exception("could not release the containment of process %s", scope.leader)


def _enter(pid: int, cgroup: Path | None, gate: int | None, limited: Limited | None = None) -> tuple[bool, int | None]:
    """Moves the gated child into its cgroup (and the cgroups of its limits), then lets it exec its
    command; returns whether it is in the cgroup, and its start marker. A child that its limits'
    cgroups cannot hold is killed at its gate, never let go (SpawnError): an unlimited run of an
    effect that asked for limits is not one of its outcomes."""
    entered = False
    let_go = True
    try:
        if cgroup is not None:
            entered = cgroups.enter(cgroup, pid)
        if limited is not None:
            if limited.needs_v2 and not entered:
                raise LimitError(f"could not move the effect into its cgroup {cgroup}, which holds its limits")
            limited.enter(pid)
    except LimitError as exc:
        let_go = False
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        raise SpawnError(f"the effect was not started: {exc}") from exc
    finally:
        if gate is not None:
            if let_go:
                with suppress(OSError):  # the child is gone already: nothing to let go
                    os.write(gate, b"\n")
            os.close(gate)
    return entered, process_start_time(pid)


def _reap_unstarted(process: LocalProcess) -> None:
    """Reaps a child killed at its gate (it dies at once: it never ran its command) and closes its pipes."""
    with suppress(ChildProcessError):
        os.waitpid(process.pid, 0)
    REAPER.leaders.discard(process.pid)
    REAPER.sessions.discard(process.pid)
    process._exit = ExitStatus(None, signal.SIGKILL)
    if process._popen is not None:
        process._popen.returncode = -signal.SIGKILL
    process.close()


def _spawn(launch: Launch, gated: bool = False) -> tuple[LocalProcess, int | None]:
    """Starts the process in its own session with the parent-death signal; its output into one pipe.
    `gated`: the process waits before its exec until a line is written to the returned gate."""
    if launch.cwd is not None and not os.path.isdir(launch.cwd):
        raise SpawnError(f"cwd {launch.cwd!r} does not exist")
    argv = list(launch.argv)
    preexec: Callable[[], None] | None = _die_with_parent
    if _SETPRIV is not None or gated:
        _check_executable(argv[0], launch.env, launch.cwd)
    if gated:
        argv = [*_GATE, *argv]
    if _SETPRIV is not None:
        argv = [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]
        preexec = None
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    gate_read, gate = os.pipe2(os.O_CLOEXEC) if gated else (None, None)
    stdin_fd: int | None = None
    stdin_write: int | None = None
    try:
        try:
            fcntl.fcntl(read_fd, _F_SETPIPE_SZ, 1024 * 1024)
        except OSError:
            pass
        if launch.stdin_source is not None:  # streamed: a pipe, fed by LocalProcess.feed_stdin
            stdin_fd, stdin_write = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(stdin_write, False)
        elif launch.stdin is not None:
            stdin_fd = os.memfd_create("effectd-stdin", os.MFD_CLOEXEC)
            os.write(stdin_fd, launch.stdin)
            os.lseek(stdin_fd, 0, os.SEEK_SET)
        stdin = stdin_fd if stdin_fd is not None else _devnull()
        stderr = write_fd if gate_read is None else gate_read
        popen: subprocess.Popen[bytes] | None = None
        try:
            if preexec is None and posix_spawn is not None:  # releases the GIL meanwhile
                pid = posix_spawn(argv, launch.env, launch.cwd, (stdin, write_fd, stderr))
            else:
                popen = subprocess.Popen(
                    argv,
                    stdin=stdin,
                    stdout=write_fd,
                    stderr=stderr,
                    cwd=launch.cwd,
                    env=dict(launch.env),
                    start_new_session=True,
                    preexec_fn=preexec,
                    close_fds=True,
                )
                pid = popen.pid
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if exc.errno == errno.ENOENT and launch.cwd and not Path(launch.cwd).is_dir():
                raise SpawnError(f"cwd {launch.cwd!r} does not exist") from exc
            raise SpawnError(f"could not start {launch.argv[0]!r}: {reason}") from exc
    except BaseException:
        for fd in (read_fd, gate, stdin_write):
            if fd is not None:
                os.close(fd)
        raise
    finally:
        for fd in (write_fd, stdin_fd, gate_read):
            if fd is not None:
                os.close(fd)
    os.set_blocking(read_fd, False)
    process = LocalProcess(pid, read_fd, launch.result_file, launch.result_limit_bytes, popen)
    process._stdin_fd, process._stdin_source = stdin_write, launch.stdin_source
    return process, gate
