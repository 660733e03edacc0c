"""Captured output: one append-only file per effect, a small tail in memory, and waiters woken on growth.

Memory per effect is bounded (the tail and the last line); everything else is on disk, so output
stays readable after the effect ends and after a restart.

The log lives where effects can reach it (beside their result files), so nothing found at its path
is trusted: it is opened without following links and without blocking, and used only if it is a
regular file. While the effect may print, readers read through the writer's own descriptor, so
a log that was removed or replaced still reads what was written. A log that is gone, or shorter
than what was counted, reads as ended: a reader reaches `eof` and never spins on missing bytes.
A write counts only the bytes that reached the file; when the disk refuses more (full, I/O
error), capture stops there and the output is marked truncated.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import time
from pathlib import Path

import anyio

from effectd.model.records import TAIL_BYTES
from effectd.support.flag import Flag

log = logging.getLogger("effectd")


def monotonic() -> float:
    """The clock of output quiet (idle timeouts, stalls): the event loop's, so it agrees with
    `anyio.sleep` (on asyncio that is `time.monotonic`; a test's virtual clock governs both); outside
    a loop, `time.monotonic`."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


_LAST_LINE_CHARS = 300
_PARTIAL_LINE_LIMIT = 8192
_NO_WAIT = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def open_log(path: str | os.PathLike[str]) -> int | None:
    """A read-only descriptor of the regular file at `path`; None when there is none there (missing,
    a symbolic link, a FIFO, anything but a regular file). Never blocks and never follows a link."""
    try:
        fd = os.open(path, os.O_RDONLY | _NO_WAIT)
    except OSError:
        return None
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def log_size(path: str | os.PathLike[str]) -> int:
    """The size of the log at `path` if it is a regular file (a link is not followed), else 0."""
    try:
        info = os.lstat(path)
    except OSError:
        return 0
    return info.st_size if stat.S_ISREG(info.st_mode) else 0


def read_log(path: str | os.PathLike[str], offset: int, length: int) -> bytes:
    """Up to `length` bytes of the log at `path` from `offset`; b"" when it is not a regular file."""
    fd = open_log(path)
    if fd is None:
        return b""
    try:
        return os.pread(fd, length, offset)
    except OSError:
        return b""
    finally:
        os.close(fd)


def _open_for_append(path: Path) -> int:
    """The log's descriptor for appending (and reading back). What an effect may have put at the path
    first (a FIFO, a link) is removed rather than opened; a regular file is appended to (a retry)."""
    flags = os.O_RDWR | os.O_APPEND | _NO_WAIT
    for _ in range(3):
        try:
            return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):  # not even opened (a device could act on it)
                os.unlink(path)
                continue
            fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENXIO, errno.EISDIR, errno.ENOENT):
                raise
        else:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                return fd
            os.close(fd)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    raise OSError(errno.EEXIST, "something keeps taking the log's place", str(path))


def _utf8_cut(data: bytes) -> int:
    """The length of the longest prefix of `data` that does not end inside a UTF-8 character."""
    end = len(data)
    for back in range(1, min(4, end) + 1):
        byte = data[end - back]
        if byte & 0xC0 == 0x80:  # continuation byte: keep looking for the lead byte
            continue
        if byte < 0x80:
            return end
        need = 2 if byte >= 0xC0 and byte < 0xE0 else 3 if byte < 0xF0 else 4
        return end if back >= need else end - back
    return end


def _first_character_length(data: bytes) -> int | None:
    """Bytes of the UTF-8 character `data` starts with: 1 for a byte that cannot start one, None when
    `data` holds only the beginning of a valid one."""
    lead = data[0]
    need = 2 if 0xC0 <= lead < 0xE0 else 3 if 0xE0 <= lead < 0xF0 else 4 if 0xF0 <= lead < 0xF8 else 1
    if any(byte & 0xC0 != 0x80 for byte in data[1:need]):
        return 1
    return need if need <= len(data) else None


def _skip_continuations(data: bytes) -> bytes:
    """`data` without the continuation bytes at its start (the tail of a character cut off in front)."""
    start = 0
    while start < min(len(data), 3) and data[start] & 0xC0 == 0x80:
        start += 1
    return data[start:]


class LineSplitter:
    """Complete lines out of a byte stream, in time linear in its length (a long line arriving in many
    chunks is joined once). A line longer than `limit` is dropped whole: it stays in the output file,
    only its parsing is given up."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self._overflow = False

    def feed(self, chunk: bytes) -> list[bytes]:
        lines = []
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            if not self._overflow:
                lines.append(b"".join([*self._parts, chunk[start:end]]))
            self._parts, self._size, self._overflow = [], 0, False
            start = end + 1
        if start < len(chunk) and not self._overflow:
            self._size += len(chunk) - start
            if self._size > self._limit:
                self._parts, self._overflow = [], True
            else:
                self._parts.append(chunk[start:])
        return lines

    def rest(self) -> bytes:
        """What came after the last newline (the unterminated last line)."""
        return b"" if self._overflow else b"".join(self._parts)


class OutputLog:
    """The combined stdout and stderr of one effect: written by the supervisor, read by any number of readers."""

    def __init__(self, path: Path, limit: int, *, size: int = 0, closed: bool = False) -> None:
        self.path = path
        self.limit = limit
        self.size = size
        self.truncated = False
        self.closed = closed
        self.last_line: str | None = None
        self.last_output = monotonic()
        self.last_output_at: float | None = None  # wall clock (time.time) of the last output
        self.lines_seen = 0
        self._partial = b""
        self._tail = b""
        self._fd: int | None = None  # the writer's descriptor, while more output may come
        self.failed: str | None = None  # why capture stopped early (the disk refused a write)
        self._grew = Flag()  # an event only once someone waits: a chunk nobody waits for makes none

    @classmethod
    def existing(cls, path: Path, limit: int, *, closed: bool = True) -> OutputLog:
        """The log of an effect from an earlier server: whatever reached the file."""
        return cls(path, limit, size=log_size(path), closed=closed)

    def refresh(self) -> bool:
        """Takes in what another server's process wrote to this log since (a log this server only
        reads); True when it grew, its waiters then woken."""
        try:
            stat = os.stat(self.path)
        except OSError:
            return False
        if stat.st_size <= self.size:
            return False
        self.size = stat.st_size
        self._tail = b""  # read again from the file when asked for
        self.last_output = monotonic()
        self.last_output_at = stat.st_mtime
        self._wake()
        return True

    def reopen(self) -> None:
        """More output will come (an attempt starts); the file is created with the first byte."""
        self.closed = False

    def _append(self, data: bytes) -> int:
        """Writes `data`; returns how many bytes reached the file (fewer only when capture failed)."""
        written = 0
        try:
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = _open_for_append(self.path)
            view = memoryview(data)
            while written < len(data):
                count = os.write(self._fd, view[written:])
                if count == 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                written += count
        except OSError as exc:
            self.failed = f"{exc.strerror or exc}"
            log.warning("output log %s: %s; capture stops after %d bytes", self.path, self.failed, self.size + written)
        return written

    def write(self, data: bytes) -> None:
        """Appends captured bytes (up to the limit) and wakes the readers."""
        if not data:
            return
        self.last_output = monotonic()
        self.last_output_at = time.time()
        room = self.limit - self.size
        if room <= 0 or self.failed is not None:
            self.truncated = True
            return
        if len(data) > room:
            data = data[:room]
            self.truncated = True
        written = self._append(data)
        if written < len(data):  # only what reached the file counts; nothing more is captured
            data = data[:written]
            self.truncated = True
            if not data:
                return
        self.size += len(data)
        self._tail = (self._tail + data)[-TAIL_BYTES:]
        self._track_lines(data)
        self._wake()

    def _track_lines(self, data: bytes) -> None:
        text = self._partial + data
        *lines, rest = text.split(b"\n")
        self._partial = rest[-_PARTIAL_LINE_LIMIT:]
        self.lines_seen += len(lines)
        for line in reversed(lines):
            if line.strip():
                self._set_last_line(line)
                break

    def _set_last_line(self, line: bytes) -> None:
        self.last_line = line.strip()[: _LAST_LINE_CHARS * 4].decode("utf-8", "replace")[:_LAST_LINE_CHARS]

    def close(self) -> None:
        """No more output will come: readers see the end."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._partial.strip():
            self._set_last_line(self._partial)
        self._partial = b""
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        self._grew.set()
        self._grew = Flag()

    async def wait_beyond(self, cursor: int, within_s: float) -> None:
        """Waits up to `within_s` until there is output past `cursor` or the log is closed."""
        with anyio.move_on_after(within_s):
            while self.size <= cursor and not self.closed:
                await self._grew.wait()

    def tail(self) -> str:
        """The last 4 KiB (at most) of the captured output, as text."""
        if self._tail or self.size == 0:
            data = self._tail
        else:
            data = self._read_at(max(0, self.size - TAIL_BYTES), TAIL_BYTES)
            self._tail = data
        if self.size > len(data):
            data = _skip_continuations(data)
        return data.decode("utf-8", "replace")

    def _read_at(self, offset: int, length: int) -> bytes:
        if self._fd is not None:  # what was written, even if the path was removed or replaced since
            try:
                return os.pread(self._fd, length, offset)
            except OSError:
                return b""
        return read_log(self.path, offset, length)

    def read(self, cursor: int, max_bytes: int) -> tuple[str, int]:
        """Output from byte `cursor`, at most `max_bytes` (a whole character more when one would not fit).

        Never ends inside a UTF-8 character unless the output itself ends there for good; bytes
        that are not valid UTF-8 come back as replacement characters. Returns the text and the
        cursor after it.
        """
        available = self.size - cursor
        if available <= 0:
            return "", cursor
        data = self._read_at(cursor, min(available, max_bytes + 3))
        if not data:
            # The bytes counted are not there (the log was removed or cut short): they cannot be read,
            # ever. Skip to the end, so that a reader reaches `eof` instead of asking again and again.
            return "", self.size
        chunk = data[:max_bytes]
        cut = _utf8_cut(chunk)
        if cut == 0 and chunk:
            # Not even one character fits in max_bytes: give that one whole character rather than nothing;
            # the beginning of one that may still be completed waits, the end of the output is let go.
            length = _first_character_length(data)
            if length is None:
                length = len(data) if self.closed and cursor + len(data) >= self.size else 0
            return data[:length].decode("utf-8", "replace"), cursor + length
        at_end = cursor + len(chunk) >= self.size
        if cut < len(chunk) and at_end and self.closed:
            cut = len(chunk)  # a character cut off for good: replace it rather than never reach eof
        chunk = data[:cut]
        return chunk.decode("utf-8", "replace"), cursor + len(chunk)
