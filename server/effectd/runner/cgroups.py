"""cgroup v2 containment: one cgroup per effect, so every descendant is found and killed, whatever
process group or session it moves to (as systemd does for a service, with `cgroup.kill`).

The effect cgroups live under `effectd/` in the server's own cgroup, when that is writable (root, or
a cgroup systemd delegated to the user). Elsewhere `Cgroups.find()` answers None and the runner falls
back to the subreaper and the environment marker.
"""

from __future__ import annotations

import errno
import logging
import os
import re
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path

log = logging.getLogger("effectd")

PARENT = "effectd"
# Where the server moves itself so that its own cgroup can enable controllers for the effects' cgroups
# (cgroup v2 lets a cgroup that holds processes do neither): see runner/controllers.py.
SERVER_LEAF = "effectd-server"
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,200}")


def _own_cgroup() -> str | None:
    """This process's cgroup v2 path (the `0::` line of /proc/self/cgroup), or None on a v1-only host."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            return line[3:].removesuffix(" (deleted)")
    return None


def _cgroup2_mount() -> tuple[str, str] | None:
    """Where the cgroup2 hierarchy is mounted, and which of its cgroups the mount shows as its root."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        before, _, after = line.partition(" - ")
        fields = before.split()
        if after.split()[:1] == ["cgroup2"] and len(fields) >= 5:
            return fields[4], fields[3]
    return None


class Cgroups:
    """The writable cgroup under which each effect gets a cgroup of its own."""

    def __init__(self, root: Path, relative: str) -> None:
        self.root = root
        # The root as /proc/PID/cgroup names it, with a trailing slash: what its effect cgroups start with.
        self._relative = relative.rstrip("/").encode() + b"/"

    @classmethod
    def find(cls) -> Cgroups | None:
        """The `effectd` cgroup in the server's own cgroup, made if needed; None where cgroup v2 is not
        mounted, the server's cgroup is not writable, or the kernel has no `cgroup.kill` (before 5.14)."""
        own, mount = _own_cgroup(), _cgroup2_mount()
        if own is None or mount is None:
            return None
        mount_point, mount_root = mount
        own = own.removesuffix(f"/{SERVER_LEAF}")  # already moved into its leaf (an earlier runner of this process)
        shown = own  # as /proc/PID/cgroup names it
        if mount_root != "/":
            if not (own == mount_root or own.startswith(mount_root.rstrip("/") + "/")):
                return None
            own = own[len(mount_root.rstrip("/")) :]
        base = Path(mount_point + own.rstrip("/")) if own != "/" else Path(mount_point)
        if not os.access(base / "cgroup.procs", os.W_OK):
            return None
        root = base / PARENT
        probe = root / f"probe-{os.getpid()}"
        try:
            root.mkdir(exist_ok=True)
            probe.mkdir(exist_ok=True)
            usable = (probe / "cgroup.kill").exists() and os.access(probe / "cgroup.procs", os.W_OK)
            probe.rmdir()
        except OSError as exc:
            log.info("cgroup containment unavailable (%s): using the subreaper and the environment marker", exc)
            return None
        return cls(root, f"{shown.rstrip('/')}/{PARENT}") if usable else None

    def path(self, name: str) -> Path | None:
        """The cgroup of effect `name`; None for a name that is not a plain directory name."""
        return self.root / name if _SAFE_NAME.fullmatch(name) else None

    def create(self, name: str) -> Path | None:
        """Makes (or reuses, for a retry) the effect's cgroup; None when it cannot be made."""
        path = self.path(name)
        if path is None:
            return None
        try:
            path.mkdir(exist_ok=True)
        except OSError as exc:
            log.warning("could not create cgroup %s (%s); effect contained without it", path, exc)
            return None
        return path

    @property
    def prefix(self) -> bytes:
        """What the cgroup line of /proc/PID/cgroup starts with (after `0::`) for a process in one of
        these effect cgroups; a zombie still names the cgroup it died in, even a removed one."""
        return self._relative


def enter(cgroup: Path, pid: int) -> bool:
    """Moves `pid` into `cgroup`; False when it cannot (the process is gone, or no permission).
    The kernel makes this take a few milliseconds: call it off the event loop."""
    try:
        fd = os.open(cgroup / "cgroup.procs", os.O_WRONLY)
    except OSError:
        return False
    try:
        os.write(fd, str(pid).encode())
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


def members(cgroup: Path) -> list[int]:
    """The live processes in `cgroup` (zombies have left it)."""
    try:
        return [int(pid) for pid in (cgroup / "cgroup.procs").read_bytes().split()]
    except OSError:
        return []


def populated(cgroup: Path) -> bool:
    """Whether any live process is left in `cgroup`."""
    try:
        events = (cgroup / "cgroup.events").read_bytes()
    except FileNotFoundError:
        return False
    except OSError:
        return bool(members(cgroup))
    return b"populated 1" in events


def kill(cgroup: Path) -> None:
    """SIGKILL to every process in `cgroup`, atomically: a process forking at that moment cannot escape."""
    with suppress(FileNotFoundError):
        (cgroup / "cgroup.kill").write_bytes(b"1")


def remove(cgroup: Path) -> bool:
    """Removes the empty cgroup; False (and a warning) when it still has processes."""
    try:
        cgroup.rmdir()
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            log.warning("cgroup %s still has processes; left in place", cgroup)
            return False
        raise
    return True


def names(root: Path) -> list[str]:
    """The names of the effect cgroups under `root` (any effect's: a live server's too)."""
    try:
        return [name for name in os.listdir(root) if _SAFE_NAME.fullmatch(name)]
    except OSError:
        return []


def leftovers(root: Path, names: Iterable[str]) -> list[Path]:
    """The effect cgroups under `root` whose names are among `names` (what a dead server left)."""
    try:
        present = set(os.listdir(root))
    except OSError:
        return []
    return [root / name for name in set(names) & present if _SAFE_NAME.fullmatch(name)]
