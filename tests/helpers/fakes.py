"""A fake runner: processes that live in memory and behave as their argv says, for engine unit tests.

`FakeRunner` implements the `Runner` interface the supervisor uses, so a test drives the real
supervisor, journal and engine API while deciding exactly what each "process" does:

- `["fake", "exit=N"]`: prints a line and exits with code N at once.
- `["fake", "after=S", "exit=N"]`: exits with code N after S seconds of the event loop's clock (virtual
  on tests/helpers/clock.py's loop), unless a signal ends it first.
- `["fake", "result=JSON", ...]`: its result file holds that JSON.
- `["fake", "bad-result", ...]`: it leaves a FIFO as its result file (ResultFileError on reading).
- `["fake", "hang"]`: runs until it is signalled; SIGTERM or SIGKILL ends it.
- `["fake", "hang", "ignore-term"]`: only SIGKILL ends it.
- anything else: the start fails (SpawnError), as a missing executable would.

`runner.hold_start` (an anyio.Event) makes every start wait until it is set: a start in flight.
`process.emit(data)` makes a running process print `data`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
from collections.abc import Sequence
from typing import Any

import anyio

from effectd.runner.base import ExitStatus, Launch, ProcessHandle, RecordedProcess, ResultFileError, Runner, SpawnError

_pids = itertools.count(10_000_000)


class FakeProcess(ProcessHandle):
    def __init__(self, launch: Launch) -> None:
        self.launch = launch
        self.argv = list(launch.argv)
        self.pid = next(_pids)
        self.start_marker = self.pid * 7
        self.signals: list[int] = []
        self._exit: ExitStatus | None = None
        self._exited = anyio.Event()
        self._chunks: list[bytes] = [f"started {self.argv[1:]}\n".encode()]
        self._more = anyio.Event()
        self._ignore_term = "ignore-term" in self.argv
        self.result: Any = None
        self._later: asyncio.TimerHandle | None = None
        after = next((float(a.partition("=")[2]) for a in self.argv[1:] if a.startswith("after=")), None)
        for arg in self.argv[1:]:
            if arg.startswith("exit="):
                status = ExitStatus(int(arg.partition("=")[2]), None)
                if after is None:
                    self._end(status)
                else:
                    self._later = asyncio.get_running_loop().call_later(after, self._end, status)
            elif arg.startswith("result="):
                self.result = json.loads(arg.partition("=")[2])
        self.closed = False

    def _end(self, status: ExitStatus) -> None:
        if self._later is not None:
            self._later.cancel()
        if self._exit is None:
            self._exit = status
            self._chunks.append(b"bye\n")
            self._exited.set()
            self._more.set()

    def emit(self, data: bytes) -> None:
        assert self._exit is None, "printed after it exited"
        self._chunks.append(data)
        self._more.set()

    async def read(self) -> bytes:
        while not self._chunks:
            if self._exit is not None:
                return b""
            await self._more.wait()
            self._more = anyio.Event()
        return self._chunks.pop(0)

    async def wait(self) -> ExitStatus:
        await self._exited.wait()
        assert self._exit is not None
        return self._exit

    def signal_group(self, signum: int) -> None:
        self.signals.append(signum)
        if signum == signal.SIGKILL or (signum == signal.SIGTERM and not self._ignore_term):
            self._end(ExitStatus(None, signum))

    async def wait_group_gone(self, within_s: float) -> bool:
        with anyio.move_on_after(within_s):
            await self._exited.wait()
        return self._exited.is_set()

    async def read_result(self) -> Any:
        if "bad-result" in self.argv:
            raise ResultFileError("the result file is a FIFO, not a regular file")
        return self.result

    def close(self) -> None:
        assert self._exit is not None, "closed while its process group was alive"
        self.closed = True

    @property
    def alive(self) -> bool:
        return self._exit is None


class FakeRunner(Runner):
    def __init__(self) -> None:
        self.processes: list[FakeProcess] = []
        self.leftovers_asked: list[RecordedProcess] = []
        self.hold_start: anyio.Event | None = None

    async def start(self, launch: Launch) -> ProcessHandle:
        if self.hold_start is not None:
            await self.hold_start.wait()
        if not launch.argv or launch.argv[0] != "fake":
            raise SpawnError(f"could not start {launch.argv[0]!r}: no such executable file")
        process = FakeProcess(launch)
        self.processes.append(process)
        return process

    async def kill_leftovers(self, processes: Sequence[RecordedProcess]) -> None:
        self.leftovers_asked.extend(processes)

    def alive(self) -> list[FakeProcess]:
        return [p for p in self.processes if p.alive]
