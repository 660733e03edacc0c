"""What `/proc` tells of processes: start times, process-group members, the server's children, and the
effects processes belong to."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

MARKER = b"EFFECTD_EFFECT_ID="


class Stat(NamedTuple):
    """The fields of /proc/PID/stat that containment needs."""

    state: bytes
    ppid: int
    pgrp: int
    session: int

    @property
    def dead(self) -> bool:
        return self.state in (b"Z", b"X")


def process_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks after boot (from /proc), or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return int(stat.rsplit(b")", 1)[1].split()[19])


def _stat_fields(pid: str | int) -> list[bytes] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except OSError:
        return None


def stat(pid: str | int) -> Stat | None:
    """The state, parent, process group and session of `pid`, or None when it is gone."""
    fields = _stat_fields(pid)
    if not fields:
        return None
    return Stat(fields[0], int(fields[1]), int(fields[2]), int(fields[3]))


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


def own_children() -> list[int]:
    """The pids of this process's children, whichever of its threads they belong to (with a
    subreaper, the orphans it adopted too)."""
    children: list[int] = []
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return children
    for tid in tasks:
        try:
            children.extend(int(pid) for pid in Path(f"/proc/self/task/{tid}/children").read_bytes().split())
        except OSError:
            continue
    return children


def marker_of(pid: str | int) -> str | None:
    """The effect id in the process's environment (EFFECTD_EFFECT_ID), or None."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    for variable in environ.split(b"\0"):
        if variable.startswith(MARKER):
            return variable[len(MARKER) :].decode(errors="replace")
    return None


def process_table() -> dict[int, Stat]:
    """Every process on the machine, alive or zombie, with its stat fields (one pass over /proc)."""
    table: dict[int, Stat] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := stat(entry)) is not None:
            table[int(entry)] = fields
    return table


def with_descendants(table: dict[int, Stat], roots: Iterable[int]) -> set[int]:
    """`roots` and every process descending from one of them, by the parent links of `table`."""
    children: dict[int, list[int]] = {}
    for pid, fields in table.items():
        children.setdefault(fields.ppid, []).append(pid)
    found: set[int] = set()
    stack = [pid for pid in roots if pid in table]
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, ()))
    return found


def descendants(roots: Iterable[int]) -> set[int]:
    """`roots` and every live process descending from them, walked through /proc's children lists."""
    found: set[int] = set()
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid in found or (fields := stat(pid)) is None or fields.dead:
            continue
        found.add(pid)
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                stack.extend(int(child) for child in Path(f"/proc/{pid}/task/{tid}/children").read_bytes().split())
            except OSError:
                continue
    return found


def effect_tree(effect_id: str, leader: int, leader_alive: bool, others: set[int], subreaper: bool) -> set[int]:
    """Live processes of one effect, found without a cgroup: the leader and its descendants, and the
    orphans of the effect and theirs, whatever group or session they moved to.

    With the server a subreaper, every orphan of the effect is a child of the server: the walk starts
    from the leader and from those of the server's children (`others`, the other effects' leaders,
    left out) that are in the leader's session or group or carry the effect's id in their environment.
    Without it, one pass over all of /proc finds the marked processes and the leader's session."""
    me = os.getpid()
    roots = {leader} if leader_alive else set()
    if subreaper:
        for pid in own_children():
            if pid == leader or pid in others or (fields := stat(pid)) is None or fields.dead:
                continue
            if leader in (fields.session, fields.pgrp) or marker_of(pid) == effect_id:
                roots.add(pid)
        return descendants(roots) - {me}
    table = process_table()
    roots |= {pid for pid, fields in table.items() if leader in (fields.pgrp, fields.session)}
    for pid, fields in table.items():
        if pid != me and not fields.dead and fields.ppid != 0 and marker_of(pid) == effect_id:
            roots.add(pid)
    return {pid for pid in with_descendants(table, roots) if not table[pid].dead and pid != me}


def effect_processes(effect_ids: set[str] | None) -> dict[str, list[int]]:
    """Live processes whose environment names one of `effect_ids` (EFFECTD_EFFECT_ID=...; None: any
    effect), and their descendants, by effect: how what an effect left behind is found after a crash,
    whatever its pid, process group or session. One pass over /proc for all of them."""
    found: dict[str, list[int]] = {}
    if effect_ids is not None and not effect_ids:
        return found
    table = process_table()
    me = os.getpid()
    marked: dict[str, list[int]] = {}
    for pid, fields in table.items():
        if pid == me or fields.dead or (effect_id := marker_of(pid)) is None:
            continue
        if effect_ids is None or effect_id in effect_ids:
            marked.setdefault(effect_id, []).append(pid)
    for effect_id, pids in marked.items():
        found[effect_id] = sorted(p for p in with_descendants(table, pids) if p != me and not table[p].dead)
    return found
