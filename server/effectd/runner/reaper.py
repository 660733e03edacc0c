"""The server as a child subreaper, and the reaping of the orphans it adopts.

With `PR_SET_CHILD_SUBREAPER` (as container shims and `tini` use it), a process whose parent dies is
re-parented to the server rather than to PID 1: a double-forked daemon of an effect stays in the
server's process tree, where the runner can find it. The server must then reap those orphans when
they die, or zombies pile up. It must also never reap a child that someone else waits for (an
effect's leader, watched through its pidfd, or any process another part of the program started), or
that waiter would lose the exit status. So a zombie child is reaped only when it is positively an
effect's: in an effect's cgroup, in the session or process group of an effect's leader, or seen alive
earlier as one of an effect's processes. `REAPER` is one per process, as the subreaper flag is.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from effectd.runner.procfs import own_children, stat

log = logging.getLogger("effectd")

_PR_SET_CHILD_SUBREAPER = 36
RELEASE_PASS_DELAY_S = 0.02
"""How long the reaper's thread waits, once an effect ends, before its pass over the server's children."""

_prctl: Any
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


class SpawnLock:
    """Held shared by each start of a leader (several spawner threads start leaders at once), and
    exclusively by what must see no leader between its fork and its `leaders.add`: a reaper pass, a
    tree walk. One waiting for it exclusively goes before starts that come after it."""

    def __init__(self) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._starting = 0
        self._exclusive = False
        self._queued = 0

    @contextmanager
    def starting(self) -> Iterator[None]:
        with self._changed:
            while self._exclusive or self._queued:
                self._changed.wait()
            self._starting += 1
        try:
            yield
        finally:
            with self._changed:
                self._starting -= 1
                if not self._starting:
                    self._changed.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._changed:
            self._queued += 1
            try:
                while self._exclusive or self._starting:
                    self._changed.wait()
            finally:
                self._queued -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._changed:
                self._exclusive = False
                self._changed.notify_all()


class Reaper:
    """Reaps the zombies of effects' orphans adopted by this process, and only those."""

    def __init__(self) -> None:
        self.lock = SpawnLock()  # shared while leaders are started, exclusive while zombies are reaped
        self.subreaper = False
        self.leaders: set[int] = set()  # started leaders not reaped yet: their runner waits for them
        self.sessions: set[int] = set()  # leaders' pids: their sessions and groups are effects'
        self.adopted: set[int] = set()  # seen alive as an effect's process, now a child of ours
        self.cgroup_prefixes: set[bytes] = set()  # how /proc/PID/cgroup names the effect cgroups' parents
        self.released: set[int] = set()  # leaders of ended effects: their sessions go after the next pass
        self.pass_delay_s = RELEASE_PASS_DELAY_S
        self._last = 0.0
        self._owed = threading.Event()
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()

    def become_subreaper(self) -> bool:
        """Makes this process the subreaper of its descendants (once); False where the kernel refuses."""
        if not self.subreaper and _prctl is not None:
            self.subreaper = _prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
        return self.subreaper

    def adopt(self, pids: Iterable[int]) -> None:
        """Notes processes seen alive as an effect's, so their zombies can be told apart later."""
        me = os.getpid()
        for pid in pids:
            fields = stat(pid)
            if fields is not None and fields.ppid == me:
                self.adopted.add(pid)

    def release(self, leader: int) -> None:
        """Called when every process of the effect led by `leader` is gone. The zombies its orphans
        left are reaped by a pass of the reaper's own thread within `pass_delay_s`, one pass for all
        the effects that ended meanwhile, off the event loop; only after that pass is the leader's
        session forgotten (until then it marks those zombies as an effect's)."""
        if not self.subreaper:
            self.sessions.discard(leader)
            return
        self.released.add(leader)  # not under `lock`, which a spawn holds: one set operation is atomic
        if self._thread is None:
            with self._starting:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._pass_when_owed, name="effectd-reaper", daemon=True)
                    self._thread.start()
        if not self._owed.is_set():
            self._owed.set()

    def _pass_when_owed(self) -> None:
        while True:
            self._owed.wait()
            time.sleep(self.pass_delay_s)  # effects ending meanwhile share the pass
            self._owed.clear()
            released = self.released.copy()
            try:
                self.reap()
            except Exception:  # the thread must live on: later effects' orphans still need their pass
                log.exception("the reaper's pass failed")
            finally:
                with self.lock.exclusive():
                    self.released -= released
                    self.sessions -= released

    def settled(self) -> bool:
        """Whether every released effect's orphans have been reaped (for tests and shutdown)."""
        return not self.released

    def reap(self, every_s: float = 0.0) -> int:
        """Reaps every zombie child that is an effect's orphan; returns how many. With `every_s`, does
        nothing when the last pass is more recent than that (a watcher calls it periodically)."""
        if not self.subreaper:
            return 0
        now = time.monotonic()
        if every_s and now - self._last < every_s:
            return 0
        self._last = now
        reaped = 0
        if not self._any_zombie_to_judge():  # no wait for the starts under way when there is nothing to reap
            return 0
        with self.lock.exclusive():
            for pid in own_children():
                if pid in self.leaders:
                    continue
                fields = stat(pid)
                if fields is None or fields.state != b"Z" or not self._ours(pid, fields.session, fields.pgrp):
                    continue
                with suppress(ChildProcessError):
                    if os.waitpid(pid, os.WNOHANG)[0] == pid:
                        reaped += 1
                self.adopted.discard(pid)
        return reaped

    def _any_zombie_to_judge(self) -> bool:
        """False when this process has no zombie child at all: one `waitid` with WNOWAIT (which reaps
        nothing) instead of reading every thread's children from /proc, the common case when an
        effect closes."""
        try:
            waitable = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # no children at all
            return False
        except OSError:
            return True
        return waitable is not None

    def _ours(self, pid: int, session: int, pgrp: int) -> bool:
        if pid in self.adopted or session in self.sessions or pgrp in self.sessions:
            return True
        if self.cgroup_prefixes:
            try:
                lines = Path(f"/proc/{pid}/cgroup").read_bytes().splitlines()
            except OSError:
                return False
            for line in lines:
                if line.startswith(b"0::"):
                    return any(line[3:].startswith(prefix) for prefix in self.cgroup_prefixes)
        return False


class ReapTicker:
    """Reaps the effects' orphans every `every_s` while any effect's watcher waits: one timer on the event loop
    for the whole server. (A timeout per watcher woke each of 1,000 live effects every second, a thousand
    cancel scopes a second, which left the loop no time for their output.)"""

    def __init__(self, reaper: Reaper, every_s: float) -> None:
        self._reaper = reaper
        self.every_s = every_s
        self._waiting = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @contextmanager
    def waiting(self) -> Iterator[None]:
        """Around a watcher's wait on the event loop: the orphans are reaped while it lasts."""
        loop = asyncio.get_running_loop()
        self._waiting += 1
        if self._timer is None or self._loop is not loop:  # none yet, or one of an event loop that is gone
            self._loop = loop
            self._timer = loop.call_later(self.every_s, self._tick)
        try:
            yield
        finally:
            self._waiting -= 1

    def _tick(self) -> None:
        self._timer = None
        if self._waiting <= 0 or self._loop is None:
            return
        try:
            self._reaper.reap(every_s=self.every_s / 2)
        except Exception:  # never the end of the ticks: the next one tries again
            log.exception("reaping the effects' orphans failed")
        self._timer = self._loop.call_later(self.every_s, self._tick)


REAPER = Reaper()
