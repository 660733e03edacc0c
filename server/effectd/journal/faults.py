"""Which errors mean "the journal takes no writes now", and how to name their cause to a user.

A journal fault is the storage refusing a write for a while: a full disk, a lock another program
holds past the busy timeout, an I/O error. It is not the request's fault and not a bug: the writer
keeps what it could not commit and tries again (`Journal`), and calls that need to write are told
`journal unavailable: <cause>`. Any other error (a clash on a unique index, a bug) is the batch's own.
"""

from __future__ import annotations

import errno
import sqlite3

# The SQLite primary result codes that mean the storage refused, by the cause we name.
_CAUSES = {
    "SQLITE_FULL": "disk full",
    "SQLITE_BUSY": "database is locked",
    "SQLITE_LOCKED": "database is locked",
    "SQLITE_IOERR": "I/O error",
    "SQLITE_READONLY": "the journal became read-only",
    "SQLITE_CANTOPEN": "the journal file cannot be opened",
    "SQLITE_PROTOCOL": "database is locked",
    "SQLITE_CORRUPT": "the journal is corrupt",
    "SQLITE_NOTADB": "the journal is corrupt",
}
_OS_CAUSES = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system"}


def journal_fault(exc: BaseException) -> str | None:
    """The cause (`disk full`, `database is locked`, ...) when `exc` is the journal refusing writes for
    now; None when it is not a journal fault (the batch's own error, or a bug)."""
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError | sqlite3.ProgrammingError | sqlite3.InterfaceError):
        return None
    if isinstance(exc, sqlite3.DatabaseError):
        name = getattr(exc, "sqlite_errorname", "") or ""
        for code, cause in _CAUSES.items():
            if name == code or name.startswith(code + "_"):
                return cause if code != "SQLITE_IOERR" else str(exc) or cause
        return str(exc) or name or type(exc).__name__
    if isinstance(exc, OSError):
        return _OS_CAUSES.get(exc.errno or 0) or exc.strerror or str(exc)
    return None
