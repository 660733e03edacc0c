"""Containment: every process of one effect, as one unit to signal and to watch, whatever process group
or session its processes moved to (GNU `timeout` calls setpgid; a daemon double-forks and calls setsid).

- `CgroupScope`: the effect's own cgroup v2. Its processes are listed by the kernel, SIGKILL reaches
  them all at once through `cgroup.kill`, and nothing leaves it.
- `TreeScope`, where no writable cgroup exists: the leader and its descendants, and the orphans of the
  effect and theirs. The server is a subreaper, so an orphan's parent becomes the server, not PID 1,
  and is told by its session or group (the leader's) or its environment (EFFECTD_EFFECT_ID).
- `GroupScope`: the leader's process group only, as before containment (the benchmark's baseline).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

from effectd.runner import cgroups, controllers
from effectd.runner.base import RecordedProcess
from effectd.runner.procfs import effect_processes, effect_tree, live_members, process_start_time
from effectd.runner.reaper import REAPER

MODES = ("cgroup", "tree", "group")


class GroupScope:
    """The leader's process group."""

    mode = "group"
    blocking = False  # whether `alive()` reads enough of /proc to belong off the event loop

    def __init__(self, leader: int) -> None:
        self.leader = leader

    def signal(self, signum: int) -> None:
        """Sends `signum` to every live process of the effect; processes already gone are not an error."""
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.leader, signum)

    def alive(self, leader_alive: bool) -> bool:
        """Whether any process of the effect is still alive (zombies are dead)."""
        return bool(live_members(self.leader))

    def close(self) -> None:
        """Releases what the scope holds; every process of the effect is gone."""
        REAPER.release(self.leader)


class TreeScope(GroupScope):
    """The leader's group and session, the environment marker, and their descendants (no cgroup)."""

    mode = "tree"

    def __init__(self, leader: int, effect_id: str) -> None:
        super().__init__(leader)
        self.effect_id = effect_id
        # A subreaper walks its own children (a few reads); without it, all of /proc is read.
        self.blocking = not REAPER.subreaper

    def _processes(self, leader_alive: bool) -> set[int]:
        with REAPER.lock.exclusive():  # the leaders known now: none is taken for one of this effect's orphans
            others = set(REAPER.leaders)
        found = effect_tree(self.effect_id, self.leader, leader_alive, others, REAPER.subreaper)
        REAPER.adopt(found)
        return found

    def signal(self, signum: int) -> None:
        super().signal(signum)
        for pid in self._processes(leader_alive=True):
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)

    def alive(self, leader_alive: bool) -> bool:
        return bool(self._processes(leader_alive))


class CgroupScope(GroupScope):
    """The effect's own cgroup."""

    mode = "cgroup"

    def __init__(self, leader: int, cgroup: Path) -> None:
        super().__init__(leader)
        self.cgroup = cgroup

    def signal(self, signum: int) -> None:
        super().signal(signum)
        if signum == signal.SIGKILL:
            cgroups.kill(self.cgroup)
            return
        for pid in cgroups.members(self.cgroup):
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)

    def alive(self, leader_alive: bool) -> bool:
        return cgroups.populated(self.cgroup)

    def close(self) -> None:
        cgroups.remove(self.cgroup)
        super().close()


def leftover_ids(root: Path | None, v1_roots: Sequence[Path] = ()) -> set[str]:
    """The ids of the effects that left something here: a cgroup under `root` or a v1 root, a live process
    whose environment names it (one pass over /proc). What `kill_leftovers` would find, for any effect."""
    found = set(cgroups.names(root)) if root is not None else set()
    found |= controllers.names(v1_roots)
    found |= set(effect_processes(None))
    return found


def kill_leftovers(processes: list[RecordedProcess], root: Path | None, v1_roots: Sequence[Path] = ()) -> None:
    """SIGKILL to what these effects left: their cgroups, whatever is there (and their limits' v1
    cgroups, then removed); in one pass over /proc, every process whose environment names one of them,
    with its descendants; and the recorded leader if its start time still matches (a reused pid is
    never killed)."""
    ids = {p.effect_id for p in processes}
    controllers.kill_leftovers(v1_roots, ids)
    left_cgroups = cgroups.leftovers(root, ids) if root is not None else []
    for cgroup in left_cgroups:
        cgroups.kill(cgroup)
    left = effect_processes(ids)
    for recorded in processes:
        pids = set(left.get(recorded.effect_id, ()))
        if recorded.pid and recorded.start_marker and process_start_time(recorded.pid) == recorded.start_marker:
            pids.add(recorded.pid)
        REAPER.adopt(pids)
        for pid in pids:
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 3.0
    for cgroup in left_cgroups:
        while cgroups.populated(cgroup) and time.monotonic() < deadline:
            time.sleep(0.01)
        cgroups.remove(cgroup)
