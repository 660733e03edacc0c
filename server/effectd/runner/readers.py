"""Waiting on an effect's fds from the event loop, each registered with it once (issue 26): its output pipe
(`PipeReader`) and its pidfd (`readable`).

`anyio.wait_readable` registers the fd with epoll and removes it again at every wait: two
`epoll_ctl` calls and the selector's bookkeeping per chunk. With 1,000 chatty effects that was a quarter
of the event loop's time. A `PipeReader` stays registered while its pipe has room in its buffer: the
loop's callback reads what is there (at most `chunk_bytes` a call) and wakes the one task reading, as
asyncio's own pipe transports do; past `limit_bytes` unread it stops reading until the reader catches up,
so a child that floods its pipe is held back by the pipe, as before, not buffered in memory.
"""

from __future__ import annotations

import asyncio
import os
from collections import deque


class PipeReader:
    """Chunks of a non-blocking fd, in order, then b"" at its end (EOF or an error reading it). One task reads;
    `close` unregisters it (the fd stays open: its owner closes it)."""

    def __init__(self, fd: int, chunk_bytes: int, limit_bytes: int) -> None:
        self._fd = fd
        self._chunk = chunk_bytes
        self._limit = limit_bytes
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._ended = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._registered = False
        self._waiter: asyncio.Future[None] | None = None

    async def read(self) -> bytes:
        """What was read since the last call (at most `limit_bytes`, in one piece), waiting for some; b"" once
        the pipe ended and everything before it was returned."""
        while not self._chunks and not self._ended:
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            self._on_readable()  # what is there already, without a trip through the selector
            if self._chunks or self._ended:
                break
            self._listen()
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if not self._chunks:
            return b""
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        if not self._ended:
            self._listen()
        return data

    def close(self) -> None:
        self._ended = True
        self._unlisten()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _listen(self) -> None:
        if not self._registered and self._loop is not None:
            self._loop.add_reader(self._fd, self._on_readable)
            self._registered = True

    def _unlisten(self) -> None:
        if self._registered and self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._registered = False

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, self._chunk)
        except BlockingIOError:
            return
        except OSError:  # the fd is broken: the output ends here
            data = b""
        if data:
            self._chunks.append(data)
            self._buffered += len(data)
            if self._buffered >= self._limit:
                self._unlisten()  # the pipe holds the rest until the reader caught up
        else:
            self._ended = True
            self._unlisten()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


async def readable(fd: int) -> None:
    """Returns once `fd` is readable (a pidfd: once its process exited). Registered with the loop for the
    whole wait, not re-armed on a timer; cancellable."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await ready
    finally:
        loop.remove_reader(fd)
