"""Pipes between flow steps: a step's stdin fed from another step's output log while that step runs.

The source is the producer's output log on disk, not its process, so a pipe works with any runner
and any number of readers. The feeder reads one chunk at a time and reads the next only once the
consumer has taken the last (`ProcessHandle.feed_stdin`): a slow consumer slows its own feed and
nothing else; the producer writes its log at its own pace, whatever the consumer does. A consumer
that exits or closes its stdin ends its feed; the producer never notices. The stream ends (EOF on
the consumer's stdin) once the producer has ended and every byte of its log was fed.

What a pipe carries is what the log holds: a producer's output past `output_limit_bytes` is cut
from its log, and so from the pipe.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator

import anyio

from effectd.supervisor.effect import Effect

CHUNK_BYTES = 64 * 1024
_CLOSED_POLL_S = 0.05


async def follow_log(producer: Effect, chunk_bytes: int = CHUNK_BYTES) -> AsyncGenerator[bytes, None]:
    """The producer's output, from its first byte, as it is written; ends once the producer has ended
    and all of it was given."""
    cursor = 0
    fd: int | None = None
    try:
        while True:
            output = producer.output
            if cursor < output.size:
                if fd is None:
                    fd = os.open(output.path, os.O_RDONLY | os.O_CLOEXEC)
                data = os.pread(fd, min(chunk_bytes, output.size - cursor), cursor)
                if data:
                    cursor += len(data)
                    yield data
                    continue
            if producer.terminal and cursor >= producer.output.size:
                return
            if output.closed:  # between attempts, or about to end: nothing to wait on but time
                await anyio.sleep(_CLOSED_POLL_S)
            else:
                await output.wait_beyond(cursor, 1.0)
    finally:
        if fd is not None:
            os.close(fd)


async def until_started(producer: Effect) -> None:
    """Waits until the producer is running (or has ended)."""
    while producer.status != "running" and not producer.terminal:
        await producer.changed.wait()
