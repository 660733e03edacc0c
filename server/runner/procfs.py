"""What `/proc` tells of processes: start times, process-group members, and the effects processes belong to."""

from __future__ import annotations

import os
from pathlib import Path


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
