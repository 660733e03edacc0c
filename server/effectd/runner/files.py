"""Files an effect can reach, opened so that nothing the effect puts in their place can block the server.

An effect knows where its result file is (and so where the output directory is). It can leave a FIFO
there (an open would wait for a writer forever), a symbolic link to anything, or a file of any size.
These files are opened without following a link and without blocking (`O_NOFOLLOW | O_NONBLOCK`),
checked to be regular files with `fstat` on the descriptor actually opened (no race with a rename),
and read only within a bound.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import stat
from functools import partial
from typing import Any

import anyio

from effectd.runner.base import ResultFileError

log = logging.getLogger("effectd")

RESULT_LIMIT_BYTES = 1024 * 1024
# Deeper JSON is refused: a record carrying it could not be serialized (pydantic stops at about 250
# levels), and every call that returns the record (list_effects of its run included) would fail.
RESULT_MAX_DEPTH = 100
_SAFE_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def file_kind(mode: int) -> str:
    """What kind of file a `st_mode` is, in words."""
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


async def clear_result_file(path: str) -> None:
    """Removes whatever an earlier attempt left at the result file's path (a file, a link, a FIFO, a
    directory: a directory tree off the event loop). Never raises: what cannot be removed is reported
    by `read_result_file` when the attempt ends."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        await anyio.to_thread.run_sync(partial(shutil.rmtree, path, ignore_errors=True))
    except OSError as exc:
        log.warning("could not remove the earlier result file %s: %s", path, exc.strerror or exc)


def read_result_file(path: str, limit: int = RESULT_LIMIT_BYTES) -> Any:
    """The JSON value in the result file at `path`; None when there is no file or it is empty.

    Raises ResultFileError, naming why, when a file is there but is not read: a symbolic link (never
    followed), not a regular file, larger than `limit` bytes (refused by its size, before any byte is
    read), not UTF-8, or not JSON (NaN and Infinity are not). Blocking only on the reading of a regular
    file of at most `limit` bytes: run it off the event loop."""
    try:
        fd = os.open(path, _SAFE_READ)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ResultFileError("the result file is a symbolic link; links are not followed") from None
        raise ResultFileError(f"the result file could not be opened: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ResultFileError(f"the result file is {file_kind(info.st_mode)}, not a regular file")
        if info.st_size > limit:
            raise ResultFileError(f"the result file is {info.st_size} bytes, over result_limit_bytes ({limit})")
        data = _read_at_most(fd, limit + 1)
    except OSError as exc:
        raise ResultFileError(f"the result file could not be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > limit:  # it grew after the fstat
        raise ResultFileError(f"the result file is over result_limit_bytes ({limit})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ResultFileError(f"the result file is not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        return None
    try:
        value = json.loads(text, parse_constant=_not_json)
    except RecursionError:
        value = _TOO_DEEP
    except ValueError as exc:  # JSONDecodeError, or an integer too long to convert
        raise ResultFileError(f"the result file is not JSON: {exc}") from None
    if value is _TOO_DEEP or _deeper_than(value, RESULT_MAX_DEPTH):
        raise ResultFileError(f"the result file's JSON is nested more than {RESULT_MAX_DEPTH} levels deep")
    return value


_TOO_DEEP = object()


def _not_json(name: str) -> Any:
    """Refuses NaN, Infinity and -Infinity, which Python reads but JSON has not: a record holding one
    could not be sent as JSON, nor read by SQLite's JSON functions."""
    raise ValueError(f"{name} is not a JSON number")


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects in `value` nest more than `limit` levels (without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def _read_at_most(fd: int, size: int) -> bytes:
    parts, total = [], 0
    while total < size:
        chunk = os.read(fd, min(size - total, 1 << 20))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)
