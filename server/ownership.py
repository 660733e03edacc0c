"""Who owns a journal: the lock file a live server holds for as long as it runs."""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from effectd.errors import DatabaseBusyError

log = logging.getLogger("effectd")


def lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".lock")


def owner_pid(db: Path) -> int | None:
    """The pid of the live server that owns `db`, or None when no server holds it."""
    path = lock_path(db)
    if not path.exists():
        return None
    with open(path, "a+") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            text = file.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(file, fcntl.LOCK_UN)
        return None


@asynccontextmanager
async def owning(db: Path) -> AsyncIterator[None]:
    """Holds the database's lock file for as long as the server runs: one live server per journal."""
    db.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(db), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise DatabaseBusyError(
                f"another effectd server (pid {other or '?'}) already owns {db}; stop it, or give this one "
                "its own database with --db"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
