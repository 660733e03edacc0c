"""Whether a journal file can be used at all, checked before anything opens it for writing.

A journal that cannot be used (not a database, corrupt or truncated, unreadable, on a read-only
file system or in a directory the server cannot write, written by a newer effectd) stops
`effectd serve` and every `effectd` reader with status 2 and one line that names the file and the
problem. The check only reads: nothing in the file changes. A journal that does not exist is fine:
the server creates it, its files mode 0600 (the -wal and -shm take the mode of the database file).
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import threading
from contextlib import closing
from pathlib import Path

from effectd.errors import EffectdError, JournalUnavailableError, JournalUnusableError
from effectd.journal.faults import journal_fault

_HEADER = b"SQLite format 3\x00"
QUICK_CHECK_S = 0.25  # a journal bigger than this can check is checked in part (a few hundred MB on a warm cache)
_SIDE_FILES = ("-wal", "-shm")


def check_journal(path: Path, *, creating: bool = True, quick_check_s: float = QUICK_CHECK_S) -> None:
    """Raises JournalUnusableError, naming `path` and the problem, when the journal cannot be used
    (with `creating`, a journal that does not exist must be one the server can create).

    Reads only (the header, SQLite's `quick_check` for at most `quick_check_s`, `_migrations`)."""
    problem = _problem(path, creating, quick_check_s)
    if problem is not None:  # on one line: SQLite's verdicts may hold several
        problem = " ".join(problem.replace("*** in database main ***", "").split())
        raise JournalUnusableError(f"journal {path} cannot be used: {problem}")


def opening_error(path: Path, exc: BaseException) -> EffectdError:
    """The error to report for `exc`, raised while opening or migrating the journal at `path`."""
    if isinstance(exc, JournalUnusableError):
        return JournalUnusableError(f"journal {path} cannot be used: {exc}")
    if isinstance(exc, EffectdError):
        return exc
    cause = journal_fault(exc)
    if cause in ("disk full", "database is locked", "disk quota exceeded"):
        return JournalUnavailableError(f"journal {path} is unavailable: {cause}")
    return JournalUnusableError(f"journal {path} cannot be used: {cause or exc}")


def prepare_journal_file(path: Path) -> None:
    """Creates the journal's directory (0700 when new) and an empty database file mode 0600, so that
    SQLite's -wal and -shm, which copy its mode, are 0600 too; an existing journal of this user that
    others may read is made 0600."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        for name in (path, *(path.with_name(path.name + side) for side in _SIDE_FILES)):
            private_file(name)


def private_file(path: Path) -> None:
    """Takes group and other permissions away from a file of this user (nothing when it does not exist)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)


def private_dir(path: Path) -> None:
    """Creates a directory mode 0700 (and its parents); makes an existing one of this user 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.stat(path)
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)


def _problem(path: Path, creating: bool, quick_check_s: float) -> str | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return _not_creatable(path) if creating else None
    except OSError as exc:
        return f"it cannot be reached ({_os_text(exc)})"
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    try:
        with open(path, "rb") as file:
            header = file.read(100)
    except OSError as exc:
        return f"it cannot be read ({_os_text(exc)})"
    if header and not header.startswith(_HEADER[: len(header)]):
        return "it is not an SQLite database (corrupt, or another kind of file)"
    if 0 < len(header) < 100:
        return "it is truncated (shorter than an SQLite header)"
    not_writable = _not_writable(path)
    if not_writable is not None:
        return not_writable
    return _content_problem(path, quick_check_s) if header else None


def _not_creatable(path: Path) -> str | None:
    """Why a journal cannot be created at `path` (its nearest existing directory must be writable)."""
    directory = path.parent
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    if not directory.is_dir():
        return f"{directory} is not a directory"
    if _read_only_fs(directory):
        return f"it does not exist and {directory} is on a read-only file system"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"it does not exist and cannot be created in {directory} (permission denied)"
    return None


def _not_writable(path: Path) -> str | None:
    if _read_only_fs(path.parent):
        return "it is on a read-only file system"
    if not os.access(path, os.R_OK):
        return "it cannot be read (permission denied)"
    if not os.access(path, os.W_OK):
        return "it is read-only (permission denied)"
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return f"its directory {path.parent} is not writable (the -wal and -shm files are created there)"
    for side in _SIDE_FILES:
        other = path.with_name(path.name + side)
        if other.exists() and not os.access(other, os.R_OK | os.W_OK):
            return f"{other.name} is not writable (permission denied)"
    return None


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


_passed: dict[Path, tuple[int, ...]] = {}
"""The journals whose quick check passed in this process, with their files' state then: one not changed
since (the same size and modification time, its WAL's too) is not checked again."""


def _file_state(path: Path) -> tuple[int, ...]:
    state: list[int] = []
    for name in (path, path.with_name(path.name + "-wal")):
        try:
            info = os.stat(name)
        except OSError:
            state += [-1, -1]
        else:
            state += [info.st_size, info.st_mtime_ns]
    return tuple(state)


def _quick_check(uri: str, quick_check_s: float) -> tuple[str] | None:
    """SQLite's `quick_check` verdict, stopped after `quick_check_s` (a journal too big to check in time is
    checked in part, and SQLite checks what it reads as it reads it). SQLite checks a whole table in one step
    of its program, so a progress handler cannot stop it (a 3 GB journal took 1.6 s with a bound of 1 s): an
    interrupt from a timer does, on a connection of its own that closes with the check."""
    with closing(sqlite3.connect(uri, uri=True, timeout=2.0, check_same_thread=False)) as conn:
        timer = threading.Timer(quick_check_s, conn.interrupt)
        timer.start()
        try:
            row = conn.execute("PRAGMA quick_check(1)").fetchone()
        except sqlite3.OperationalError as exc:
            if "interrupted" not in str(exc):
                raise
            row = ("ok",)
        finally:
            timer.cancel()
            timer.join()
    return None if row is None else (str(row[0]),)


def _content_problem(path: Path, quick_check_s: float) -> str | None:
    from effectd.journal.migrations import MIGRATIONS

    uri = f"{path.absolute().as_uri()}?mode=ro"
    try:
        if _passed.get(path.absolute()) != _file_state(path):  # `effectd serve` checks, then its engine: once
            verdict = _quick_check(uri, quick_check_s)
            if verdict is None or verdict[0] != "ok":
                return f"it is corrupt or truncated ({verdict[0] if verdict else 'no verdict'})"
            _passed[path.absolute()] = _file_state(path)  # as the check left them (a reader may touch the WAL)
        with closing(sqlite3.connect(uri, uri=True, timeout=2.0)) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "_migrations" not in tables:
                return "it is an SQLite database but not an effectd journal (no _migrations table)" if tables else None
            names = [row[0] for row in conn.execute("SELECT name FROM _migrations ORDER BY name")]
    except sqlite3.DatabaseError as exc:
        cause = journal_fault(exc) or str(exc)
        if cause in ("the journal is corrupt", "file is not a database", "database disk image is malformed"):
            return f"it is corrupt or truncated ({exc})"
        return f"it cannot be read ({cause})"
    known = {name for name, _ in MIGRATIONS}
    unknown = [name for name in names if name not in known]
    if unknown:
        return (
            f"it was written by a newer effectd (schema migration {unknown[-1]!r} is unknown to this one); "
            "run that effectd, or a newer one"
        )
    return None


def _os_text(exc: OSError) -> str:
    return exc.strerror or errno.errorcode.get(exc.errno or 0, str(exc))
