"""An effect's `limits` (memory, processes, CPU), enforced by cgroup controllers on its own cgroups.

Each limit goes through one controller, found once at start (`Controllers.find`):
- cgroup v2, in the effect's own v2 cgroup (the one containment makes under `effectd/`), when the
  server's cgroup delegates the controller and it can be enabled for `effectd/`'s children;
- else the cgroup v1 hierarchy of that controller (a hybrid host): a cgroup per effect under `effectd/`
  in the server's own v1 cgroup of that hierarchy.

Enabling a v2 controller for children means writing it into `cgroup.subtree_control` of every cgroup
between the server's and the effect's. The kernel refuses that in a cgroup that holds processes
(cgroup v2's "no internal processes" rule; the true root is exempt), and the server's own cgroup holds
the server. So, as podman and systemd's delegation guide do, the server first moves itself into a
leaf beside `effectd/`, `<own>/effectd-server`, and then enables the controllers in `<own>` and in
`<own>/effectd`. A cgroup that also holds other processes (the shell that started the server) cannot
delegate: the limit is then missing, and says why.

Every path is taken from `/proc/self/cgroup` and `/proc/self/mountinfo` under `proc`, so a test points
the whole thing at a fake cgroupfs tree.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import time
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from effectd.runner.base import Usage
from effectd.runner.cgroups import PARENT, SERVER_LEAF

log = logging.getLogger("effectd")

LIMIT_CONTROLLERS: dict[str, str] = {"memory_mb": "memory", "pids": "pids", "cpu": "cpu"}
CPU_PERIOD_US = 100_000
CPU_LONG_PERIOD_US = 1_000_000  # for less than 0.01 of a core: the kernel's smallest quota is 1000 us
MIN_QUOTA_US = 1_000
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,200}")
_MIB = 1024 * 1024


class LimitError(Exception):
    """Raised when an effect's limit cgroups cannot be made or its limits cannot be written."""


@dataclass(frozen=True)
class Place:
    """Where one controller is enforced: the cgroup version, and the folder each effect's cgroup goes in
    (for v2, the containment's `effectd/`)."""

    controller: str
    version: int
    root: Path
    note: str = ""  # e.g. that the server enables it when it starts (`effectd doctor` only looks)

    def describe(self) -> str:
        return f"cgroup v{self.version} {self.controller}: {self.root}" + (f" ({self.note})" if self.note else "")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _write(path: Path, value: str) -> None:
    with open(path, "w") as file:
        file.write(value)


def _names(text: str | None) -> set[str]:
    """The controllers a `cgroup.controllers` or `cgroup.subtree_control` file names."""
    return {name.lstrip("+") for name in (text or "").split()}


def _v2_mount(mountinfo: str) -> tuple[str, str] | None:
    """The cgroup2 mount point, and which cgroup the mount shows as its root."""
    for line in mountinfo.splitlines():
        before, _, after = line.partition(" - ")
        fields = before.split()
        if after.split()[:1] == ["cgroup2"] and len(fields) >= 5:
            return fields[4], fields[3]
    return None


def _v1_mounts(mountinfo: str) -> dict[str, tuple[str, str]]:
    """Each v1 controller's mount point and mount root (a hierarchy may carry several: `cpu,cpuacct`)."""
    mounts: dict[str, tuple[str, str]] = {}
    for line in mountinfo.splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(tail) >= 3 and tail[0] == "cgroup" and len(fields) >= 5:
            for option in tail[2].split(","):
                mounts.setdefault(option, (fields[4], fields[3]))
    return mounts


def _inside(own: str, mount_root: str) -> str | None:
    """`own` (as /proc/self/cgroup names it) relative to what the mount shows; None if outside it."""
    if mount_root == "/":
        return own
    root = mount_root.rstrip("/")
    if own == root or own.startswith(root + "/"):
        return own[len(root) :] or "/"
    return None


def _folder(mount_point: str, own: str) -> Path:
    return Path(mount_point + own.rstrip("/")) if own != "/" else Path(mount_point)


@dataclass
class Controllers:
    """Where each limit is enforced on this host (`places`), and why the others cannot be (`missing`)."""

    places: dict[str, Place] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)

    @classmethod
    def find(
        cls, v2_root: Path | None, *, proc: Path = Path("/proc/self"), prepare: bool = True, pid: int | None = None
    ) -> Controllers:
        """Each limit's controller. `v2_root`: the v2 cgroup the effects' cgroups go in (None: no v2
        containment, so no v2 limits). `prepare`: delegate v2 controllers and make the v1 folders now
        (the server, at start); without it, only look (`effectd doctor`). `pid`: the server's process."""
        found = cls()
        mountinfo = _read(proc / "mountinfo") or ""
        lines = (_read(proc / "cgroup") or "").splitlines()
        v2 = _V2(v2_root, prepare, os.getpid() if pid is None else pid).enabled()
        v1_own = {}
        for line in lines:
            _, controllers, path = line.split(":", 2) if line.count(":") >= 2 else ("", "", "")
            for controller in controllers.split(","):
                if controller:
                    v1_own[controller] = path.removesuffix(" (deleted)")
        v1_mounts = _v1_mounts(mountinfo)
        for limit, controller in LIMIT_CONTROLLERS.items():
            if v2_root is not None and controller in v2.controllers:
                note = "enabled for the effects when the server starts" if controller in v2.later else ""
                found.places[limit] = Place(controller, 2, v2_root, note)
                continue
            place, why = _v1_place(controller, v1_own.get(controller), v1_mounts.get(controller), prepare)
            if place is not None:
                found.places[limit] = place
            else:
                v2_why = v2.why.get(controller) or "no cgroup v2 containment here"
                found.missing[limit] = f"the {controller} controller is missing (cgroup v2: {v2_why}; cgroup v1: {why})"
        return found

    def refusal(self, limits: Iterable[str]) -> str | None:
        """Why these limits cannot be enforced here (naming each missing controller), or None."""
        missing = [(limit, self.missing[limit]) for limit in limits if limit not in self.places]
        if not missing:
            return None
        told = "; ".join(f"`{limit}`: {why}" for limit, why in missing)
        return (
            f"this host cannot enforce {', '.join(f'`{limit}`' for limit, _ in missing)}: {told}. "
            "`effectd doctor` shows what this host supports; dispatch without that limit, or run effectd "
            "where its cgroup delegates the controller (as root, or under systemd with Delegate=yes)"
        )

    @property
    def v1_roots(self) -> list[Path]:
        """The v1 folders effects' cgroups go in (one per hierarchy)."""
        return list(dict.fromkeys(p.root for p in self.places.values() if p.version == 1))

    def make(self, name: str, limits: Mapping[str, float], v2_cgroup: Path | None) -> Limited:
        """The effect's limit cgroups with `limits` written in, before any process is in them: the v1
        ones made here, the v2 one (`v2_cgroup`, made by containment) written to. Raises LimitError."""
        if not _SAFE_NAME.fullmatch(name):
            raise LimitError(f"no cgroup can be named after effect {name!r}")
        made: list[Path] = []
        try:
            for limit, value in limits.items():
                place = self.places.get(limit)
                if place is None:
                    raise LimitError(self.refusal([limit]) or limit)
                if place.version == 2:
                    if v2_cgroup is None:
                        raise LimitError(f"`{limit}` needs the effect's cgroup v2, which could not be made")
                    cgroup = v2_cgroup
                else:
                    cgroup = place.root / name
                    if cgroup not in made:
                        cgroup.mkdir(exist_ok=True)
                        made.append(cgroup)
                _set(cgroup, place, limit, value)
        except OSError as exc:
            remove(made)
            raise LimitError(f"could not set the effect's limits: {exc}") from exc
        except LimitError:
            remove(made)
            raise
        memory = self.places.get("memory_mb")
        usage_from = v2_cgroup if memory is not None and memory.version == 2 else None
        if "memory_mb" in limits and memory is not None and memory.version == 1:
            usage_from = memory.root / name
        needs_v2 = any(self.places[limit].version == 2 for limit in limits)
        return Limited(made, usage_from, needs_v2)


class _V2:
    """The v2 side of `Controllers.find`: which limit controllers `effectd/`'s children get, delegating
    them first when asked to."""

    def __init__(self, root: Path | None, prepare: bool, pid: int) -> None:
        self.root, self.prepare, self.pid = root, prepare, pid
        self.controllers: set[str] = set()
        self.later: set[str] = set()  # only looking: the controllers the server would enable at start
        self.why: dict[str, str] = {}

    def enabled(self) -> _V2:
        if self.root is None:
            return self
        wanted = set(LIMIT_CONTROLLERS.values())
        own = self.root.parent
        offered = _names(_read(own / "cgroup.controllers")) & wanted
        for controller in wanted - offered:
            self.why[controller] = f"{own} does not delegate it (not in its cgroup.controllers)"
        enabled = _names(_read(self.root / "cgroup.subtree_control")) & wanted
        needed = offered - enabled
        if needed and self.prepare:
            problem = self._delegate(own, needed)
            if problem is None:
                enabled |= needed
            else:
                for controller in needed:
                    self.why[controller] = problem
        elif needed:  # only looking: what the server would do at start
            enabled |= needed
            self.later = needed
        self.controllers = enabled
        return self

    def _delegate(self, own: Path, needed: set[str]) -> str | None:
        """Enables `needed` for the effects' cgroups; moves this process into its leaf first when its
        cgroup is not the root. Returns why it could not, or None."""
        assert self.root is not None
        change = " ".join(f"+{c}" for c in sorted(needed))
        try:
            if (own / "cgroup.type").exists():  # not the root: processes here would forbid the change
                others = _members(own) - {self.pid}
                if self.pid in _members(own) or others:
                    leaf = own / SERVER_LEAF
                    leaf.mkdir(exist_ok=True)
                    _write(leaf / "cgroup.procs", str(self.pid))
                    others = _members(own) - {self.pid}
                if others:
                    shown = ", ".join(map(str, sorted(others)[:5]))
                    return (
                        f"{own} also holds other processes ({shown}), so it cannot enable controllers for its "
                        "children; start effectd in a cgroup of its own (e.g. `systemd-run --user --scope "
                        "-p Delegate=yes effectd serve`)"
                    )
            if not needed <= _names(_read(own / "cgroup.subtree_control")):
                _write(own / "cgroup.subtree_control", change)
            _write(self.root / "cgroup.subtree_control", change)
        except OSError as exc:
            return f"could not enable it for {self.root}'s children ({exc.strerror or exc})"
        log.info("cgroup v2 controllers %s enabled for the effects' cgroups under %s", change, self.root)
        return None


def _v1_place(
    controller: str, own: str | None, mount: tuple[str, str] | None, prepare: bool
) -> tuple[Place | None, str]:
    """The v1 folder of `controller`'s hierarchy the effects' cgroups go in, or None and why not."""
    if mount is None or own is None:
        return None, f"no {controller} hierarchy mounted"
    relative = _inside(own, mount[1])
    if relative is None:
        return None, f"the server's {controller} cgroup {own} is outside the mount {mount[0]}"
    base = _folder(mount[0], relative)
    root = base / PARENT
    if not os.access(base / "cgroup.procs", os.W_OK):
        return None, f"{base} is not writable (effectd runs as root there, or in a delegated cgroup)"
    if prepare:
        try:
            root.mkdir(exist_ok=True)
        except OSError as exc:
            return None, f"could not make {root} ({exc.strerror or exc})"
    return Place(controller, 1, root), ""


def _set(cgroup: Path, place: Place, limit: str, value: float) -> None:
    """Writes one limit into the effect's cgroup of its controller."""
    if limit == "memory_mb":
        size = str(int(value) * _MIB)
        if place.version == 2:
            _write(cgroup / "memory.max", size)
            if (cgroup / "memory.swap.max").exists():  # no swap beyond the limit: it is a limit on memory
                _write(cgroup / "memory.swap.max", "0")
        else:
            _write(cgroup / "memory.limit_in_bytes", size)
            if (cgroup / "memory.memsw.limit_in_bytes").exists():
                _write(cgroup / "memory.memsw.limit_in_bytes", size)
    elif limit == "pids":
        _write(cgroup / "pids.max", str(int(value)))
    elif limit == "cpu":
        quota, period = cpu_quota(value)
        if place.version == 2:
            _write(cgroup / "cpu.max", f"{quota} {period}")
        else:
            _write(cgroup / "cpu.cfs_period_us", str(period))
            _write(cgroup / "cpu.cfs_quota_us", str(quota))
    else:
        raise LimitError(f"unknown limit {limit!r}")


def cpu_quota(cores: float) -> tuple[int, int]:
    """The CFS quota and period (microseconds) for `cores`: 0.5 is 50000 of every 100000."""
    period = CPU_PERIOD_US if cores * CPU_PERIOD_US >= MIN_QUOTA_US else CPU_LONG_PERIOD_US
    return max(MIN_QUOTA_US, round(cores * period)), period


def _members(cgroup: Path) -> set[int]:
    text = _read(cgroup / "cgroup.procs")
    return {int(pid) for pid in (text or "").split() if pid.isdigit()}


@dataclass
class Limited:
    """An effect's limit cgroups: the v1 ones it is moved into (the v2 one is containment's), and the
    cgroup whose memory counters tell how it ended."""

    v1: list[Path]
    usage_from: Path | None
    needs_v2: bool = False  # some limit is written in the v2 cgroup: the process must be moved there

    def enter(self, pid: int) -> None:
        """Moves the (gated) process into each v1 cgroup; raises LimitError when one move fails."""
        for cgroup in self.v1:
            try:
                _write(cgroup / "cgroup.procs", str(pid))
            except OSError as exc:
                raise LimitError(f"could not move the effect into {cgroup} ({exc.strerror or exc})") from exc

    def usage(self) -> Usage:
        return read_usage(self.usage_from)


def read_usage(cgroup: Path | None) -> Usage:
    """The memory verdict of an effect's cgroup, read before it is removed: its peak (v2 `memory.peak`,
    v1 `memory.max_usage_in_bytes`) and whether the OOM killer ended one of its processes (v2
    `memory.events`, v1 `memory.oom_control`, on kernels before 4.13 `memory.failcnt`)."""
    if cgroup is None:
        return Usage()
    peak = _read(cgroup / "memory.peak") or _read(cgroup / "memory.max_usage_in_bytes")
    events = _read(cgroup / "memory.events") or _read(cgroup / "memory.oom_control")
    killed = False
    if events is not None and "oom_kill " in events:
        killed = any(line.split()[:1] == ["oom_kill"] and line.split()[1] != "0" for line in events.splitlines())
    elif (failures := _read(cgroup / "memory.failcnt")) is not None:
        killed = failures.strip() not in ("", "0")
    mib = round(int(peak) / _MIB, 1) if peak is not None and peak.strip().isdigit() else None
    return Usage(peak_memory_mb=mib, memory_killed=killed)


def remove(cgroups: Iterable[Path], within_s: float = 1.0) -> None:
    """Removes the effect's v1 cgroups once empty (a process that just exited may still count for a
    moment); one that stays busy is left with a warning."""
    deadline = time.monotonic() + within_s
    for cgroup in cgroups:
        while True:
            try:
                cgroup.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno == errno.EBUSY and time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
                log.warning("could not remove cgroup %s (%s); left in place", cgroup, exc.strerror or exc)
            break


def names(roots: Iterable[Path]) -> set[str]:
    """The names of the effects' v1 cgroups under these roots."""
    found: set[str] = set()
    for root in roots:
        with suppress(OSError):
            found |= {name for name in os.listdir(root) if _SAFE_NAME.fullmatch(name)}
    return found


def kill_leftovers(roots: Iterable[Path], names: Iterable[str], within_s: float = 3.0) -> None:
    """SIGKILL to whatever is left in these effects' v1 cgroups (v1 has no `cgroup.kill`: each pass
    kills what it lists, until a pass finds none), then removes the cgroups."""
    wanted = {name for name in names if _SAFE_NAME.fullmatch(name)}
    left = []
    for root in roots:
        with suppress(OSError):
            left += [root / name for name in wanted & set(os.listdir(root))]
    deadline = time.monotonic() + within_s
    for cgroup in left:
        while (pids := _members(cgroup)) and time.monotonic() < deadline:
            for pid in pids:
                with suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)
    remove(left)
