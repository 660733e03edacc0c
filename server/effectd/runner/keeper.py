"""The keeper: a small process that outlives the server by a moment, to kill what the server's effects left.

The parent-death signal reaches only an effect's leader. Its descendants (a `setsid` daemon, a
subshell, a process GNU `timeout` moved to another group) live on after a SIGKILL of the server, until
the next start's recovery, which may never come. So at its first effect the server starts one keeper,
in a session of its own and holding the read end of a pipe whose only write end the server holds (close
on exec: no effect inherits it). The server tells it each effect as it starts (its id, its leader, its
cgroups) and forgets it when every process of the effect is gone. When the pipe closes, because the
server died however it died, the keeper kills every effect it still knows, descendants included:
`cgroup.kill` for a cgroup v2 (atomic: a process forking at that moment cannot escape), SIGKILL to
each member of a cgroup v1, and, in one pass over /proc, every process in a leader's session or
group, or carrying one of the effects' ids in its environment, with its descendants. It passes again
until none is left or `SETTLE_S` is over, and exits. After a clean stop it knows no effect and exits
at once.

What it cannot find: a process that left its cgroup (root, or the owner of a delegated cgroup, can
move itself out; a sandbox cannot) and also cleared its environment and left the leader's session.
Recovery at the next start does not find that one either.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from contextlib import suppress
from pathlib import Path

from effectd.runner import cgroups
from effectd.runner.procfs import marker_of, process_table, with_descendants

log = logging.getLogger("effectd")

SETTLE_S = 0.8
"""How long the keeper goes on killing after the server's death: the contract's bound is 1 s."""


class Keeper:
    """The server's side: starts the keeper once, tells it of each effect, and forgets it again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._pid: int | None = None
        self._failed = False
        self._watched: dict[str, str] = {}  # effect id -> its line: told again to a keeper started after one died

    @property
    def pid(self) -> int | None:
        """The keeper's pid, once started."""
        return self._pid

    def _start(self) -> bool:
        """Starts the keeper (again, if it died: told every effect it must know); False when it cannot run."""
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        home = str(Path(__file__).resolve().parents[2])  # where the `effectd` package is
        code = f"import sys; sys.path.insert(0, {home!r}); from effectd.runner.keeper import main; main()"
        try:
            self._pid = os.posix_spawn(
                sys.executable,
                [sys.executable, "-I", "-S", "-B", "-c", code],
                {},  # it needs none, and must not look like an effect's process (no EFFECTD_EFFECT_ID)
                file_actions=[
                    (os.POSIX_SPAWN_DUP2, read_end, 0),
                    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),  # stdout may be the MCP transport
                ],
                setsid=True,  # a signal to the server's process group does not reach it
            )
        except OSError as exc:
            if not self._failed:
                log.warning("could not start the keeper (%s): effects' descendants outlive a killed server", exc)
            self._failed = True
            os.close(write_end)
            return False
        finally:
            os.close(read_end)
        self._fd = write_end
        for line in self._watched.values():
            self._write(line)
        return True

    def _alive(self) -> bool:
        """Whether the keeper runs; one that died is reaped here (it is this process's child)."""
        if self._pid is None:
            return False
        try:
            return os.waitpid(self._pid, os.WNOHANG)[0] == 0
        except ChildProcessError:
            return False

    def _write(self, line: str) -> None:
        assert self._fd is not None
        try:
            os.write(self._fd, line.encode() + b"\n")  # one write under PIPE_BUF: atomic; the keeper drains it
        except OSError as exc:
            log.warning("could not tell the keeper (%s)", exc)

    def _send(self, effect_id: str, line: str | None) -> None:
        """Tells the keeper of the effect (`line`) or that it is gone (None), starting the keeper as needed."""
        with self._lock:
            if line is None:
                if self._watched.pop(effect_id, None) is None:
                    return
            else:
                self._watched[effect_id] = line
            if self._alive():
                assert self._fd is not None
                self._write(line or f"- {effect_id}")
                return
            if self._fd is not None:  # it died (someone killed it): a new one learns every live effect
                os.close(self._fd)
                self._fd = None
                log.warning("the keeper (pid %s) died; starting another", self.pid)
            if line is not None:
                self._start()

    def probe(self, within_s: float) -> str | None:
        """Starts this (unused) keeper and closes its pipe: None when it ran and exited within `within_s`,
        else what went wrong. For `effectd doctor`; the server's own keeper is KEEPER."""
        with self._lock:
            if not self._start():
                return "the keeper could not start"
            assert self._fd is not None and self._pid is not None
            os.close(self._fd)
            self._fd = None
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self._pid, os.WNOHANG)
            if pid:
                code = os.waitstatus_to_exitcode(status)
                return None if code == 0 else f"the keeper exited with {code} when its pipe closed"
            time.sleep(0.01)
        with suppress(ProcessLookupError):
            os.kill(self._pid, signal.SIGKILL)
        os.waitpid(self._pid, 0)
        return f"the keeper did not exit within {within_s:g} s of its pipe closing"

    def watch(self, effect_id: str, leader: int, cgroup_paths: Iterable[Path] = ()) -> None:
        """From the start of the effect's leader on, a death of the server kills every process of it."""
        fields = [effect_id, str(leader), *(str(path) for path in cgroup_paths)]
        if not all(field and " " not in field and "\n" not in field for field in fields):
            log.warning("effect %s: a name the keeper cannot take; it is left to the next start", effect_id)
            return
        self._send(effect_id, "+ " + " ".join(fields))

    def forget(self, effect_id: str) -> None:
        """Every process of the effect is gone: nothing of it is left to kill."""
        self._send(effect_id, None)


KEEPER = Keeper()
"""One per process, as the pipe it watches is."""


# --- the keeper process -------------------------------------------------------------------------


class _Watched:
    def __init__(self, leader: int, cgroup_paths: Sequence[str]) -> None:
        self.leader = leader
        self.cgroups = [Path(path) for path in cgroup_paths]


def _kill_all(pids: Iterable[int]) -> None:
    for pid in pids:
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _pass(watched: dict[str, _Watched]) -> bool:
    """One round of killing; True when something of the effects was still alive."""
    alive = False
    for effect in watched.values():
        for cgroup in effect.cgroups:
            if (cgroup / "cgroup.kill").exists():
                if cgroups.populated(cgroup):
                    alive = True
                    cgroups.kill(cgroup)
            elif members := cgroups.members(cgroup):  # cgroup v1: no cgroup.kill
                alive = True
                _kill_all(members)
    me = os.getpid()
    table = process_table()
    leaders = {effect.leader for effect in watched.values()}
    roots = {pid for pid, fields in table.items() if fields.session in leaders or fields.pgrp in leaders}
    roots |= leaders & set(table)
    roots |= {pid for pid, fields in table.items() if not fields.dead and marker_of(pid) in watched}
    found = {pid for pid in with_descendants(table, roots) if pid != me and not table[pid].dead}
    _kill_all(found)
    return alive or bool(found)


def settle(watched: dict[str, _Watched], within_s: float = SETTLE_S) -> None:
    """Kills every process of the watched effects, passing again until none is left or `within_s` is over."""
    deadline = time.monotonic() + within_s
    delay = 0.005
    while _pass(watched) and time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def main() -> None:
    """The keeper process: reads `+ ID LEADER [CGROUP...]` and `- ID` lines until the pipe closes, then settles."""
    for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):  # a terminal's signals are the server's to act on
        signal.signal(signum, signal.SIG_IGN)
    watched: dict[str, _Watched] = {}
    for raw in sys.stdin.buffer:
        fields = raw.decode(errors="replace").split()
        if len(fields) >= 3 and fields[0] == "+" and fields[2].isdigit():
            watched[fields[1]] = _Watched(int(fields[2]), fields[3:])
        elif len(fields) == 2 and fields[0] == "-":
            watched.pop(fields[1], None)
    if watched:
        settle(watched)
