"""The journal's start-up lock, and which servers on a journal are alive.

Any number of servers share one journal (see `effectd.peers.sessions`). What must never run twice at once
is start-up: migrating the schema, and taking over the effects of servers that are gone. That is
kept apart by an exclusive `flock` on a lock file named after the journal's *real* path, so a
symlink, a relative path or `..` all reach the same lock. The lock is not what keeps a live server's
effects safe: that rests on the `servers` table (a server is gone only when its pid no longer runs
the process started at the recorded time) and on taking a gone server over inside one database
transaction, so even a deleted lock file cannot make two servers recover the same effects.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from effectd.errors import DatabaseBusyError
from effectd.model.records import new_id
from effectd.runner.procfs import process_start_time

LOCK_WAIT_S = 15.0


def lock_path(db: Path) -> Path:
    """The lock file of the journal at `db`: beside the file it really is (symlinks resolved)."""
    real = db.resolve()
    return real.with_name(real.name + ".lock")


class StartLock:
    """An exclusive lock on the journal's start-up (migration and recovery), released once recovery is done."""

    def __init__(self, db: Path) -> None:
        self.path = lock_path(db)
        self._fd: int | None = None

    async def acquire(self, within_s: float = LOCK_WAIT_S) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + within_s
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise DatabaseBusyError(
                        f"another effectd process has held {self.path} for over {within_s:g} s (an effectd from "
                        "before sessions holds it for as long as it runs); stop it, or use another --db"
                    ) from None
                await anyio.sleep(0.02)
                continue
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file someone deleted or replaced while we waited for it
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)
                self._fd = fd
                return
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class ServerIdentity:
    """Who a server is: its id (an effect's `owner`), and how to tell later whether it still runs."""

    server_id: str
    pid: int
    pid_start: int | None
    host: str

    @classmethod
    def this_process(cls) -> ServerIdentity:
        return cls(new_id("srv_"), os.getpid(), process_start_time(os.getpid()), socket.gethostname())


# The servers (engines) open in this process, with the real path of their journal: a process may run
# several (tests, the Python API), so for a row of this very process the pid says nothing, this does.
OPEN_HERE: set[tuple[str, str]] = set()


def server_alive(row: Mapping[str, Any], db: Path, host: str | None = None) -> bool:
    """Whether the server of a `servers` row still runs: not stopped, and its pid still the process that
    started at the recorded time (never the pid alone). A server of another host is taken as alive."""
    if row.get("stopped_at") is not None or row.get("pid") is None:
        return False
    if row.get("host") != (host or socket.gethostname()):
        return row.get("host") is not None
    if process_start_time(int(row["pid"])) != row.get("pid_start"):
        return False
    return row["pid"] != os.getpid() or (row["server_id"], str(db.resolve())) in OPEN_HERE


def runner_alive(owner: str | None, servers: Mapping[str, Mapping[str, Any]], db: Path) -> bool:
    """Whether a live server runs the effects of `owner`: the owner itself, or the server that took
    its effects over when it went (`servers`: the `servers` table by id)."""
    row = servers.get(owner or "")
    for _ in range(len(servers) + 1):
        if row is None:
            return False
        if row.get("adopted_by") is None:
            return server_alive(row, db)
        row = servers.get(row["adopted_by"])
    return False
