"""The runner's fd waits on the event loop (`effectd.runner.readers`, issue 26): an output pipe read by a
reader registered once, which holds back a flood in the pipe rather than in memory, and ends cleanly."""

from __future__ import annotations

import fcntl
import os
import struct
import termios

import anyio
import anyio.lowlevel
import pytest

from effectd.runner.readers import PipeReader

pytestmark = pytest.mark.anyio


def unread(fd: int) -> int:
    """How many bytes wait in the pipe (FIONREAD)."""
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])


def fill(fd: int) -> int:
    """Writes into the pipe until it is full; returns how many bytes."""
    total = 0
    while True:
        try:
            total += os.write(fd, b"x" * 4096)
        except BlockingIOError:
            return total


async def test_chunks_come_in_order_then_the_end() -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    reader = PipeReader(read_end, 1024, 4096)
    try:
        got = b""
        for line in (b"one\n", b"two\n", b"three\n"):
            os.write(write_end, line)
            got += await reader.read()
        os.close(write_end)
        assert got == b"one\ntwo\nthree\n"
        assert await reader.read() == b"" and await reader.read() == b""
    finally:
        reader.close()
        os.close(read_end)


async def test_a_flood_is_held_back_in_the_pipe_not_read_into_memory() -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    reader = PipeReader(read_end, 1024, 4096)
    try:
        written = fill(write_end)
        first = await reader.read()
        for _ in range(50):  # the loop runs on while nobody reads: the reader must not drain the pipe
            await anyio.lowlevel.checkpoint()
        held = unread(read_end)
        assert held >= written - len(first) - 4096 - 1024, (written, len(first), held)
        taken = len(first)
        with anyio.fail_after(10):
            while taken < written:
                taken += len(await reader.read())
        assert taken == written
    finally:
        reader.close()
        os.close(read_end)
        os.close(write_end)


async def test_close_ends_a_read_that_waits() -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    reader = PipeReader(read_end, 1024, 4096)
    result: list[bytes] = []
    try:
        async with anyio.create_task_group() as tg:

            async def waits() -> None:
                result.append(await reader.read())

            tg.start_soon(waits)
            await anyio.lowlevel.checkpoint()
            await anyio.lowlevel.checkpoint()
            reader.close()
        assert result == [b""]
    finally:
        os.close(read_end)
        os.close(write_end)
