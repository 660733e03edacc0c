"""A virtual clock for asyncio: time in unit tests is moved by the test, not waited out.

`VirtualClockLoop` is an `asyncio.SelectorEventLoop` whose `time()` is a number that only moves when
the test calls `await clock.advance(seconds)`. anyio on asyncio reads that clock for `sleep`,
`fail_after`, `move_on_after` and `current_time()`, so every timer of the engine (timeouts, graces,
backoffs, `await_group` bounds) is virtual. Use it through anyio's `loop_factory` backend option::

    @pytest.fixture
    def anyio_backend() -> tuple[str, dict[str, object]]:
        return "asyncio", {"loop_factory": VirtualClockLoop}

How it stays deterministic and never sleeps for real:

- No autojump: aiosqlite and the runner's threads do real work, and the loop must still wake on their
  `call_soon_threadsafe` in real time. Only timers are virtual; everything else runs as usual.
- `advance` runs on the loop's own thread, so the loop is not inside `select()` while time moves: the
  next loop iteration sees the new time and runs every timer due by then. `advance` then `settle`s:
  it yields until the ready queue is empty and no timer at or before the new time remains, a few
  times in a row, so what became due (and what that made ready) has run when it returns.
- The loop computes its `select()` timeout from virtual timers (`when - time()`): with time frozen,
  a timer 30 s ahead would make it block up to 30 real seconds whenever no thread wakes it. The loop's
  selector caps every finite timeout at `MAX_REAL_WAIT_S`, so the loop looks at the clock again at
  least that often; a `None` timeout (no timer at all) still blocks until an fd or a thread wakes it.
- Before it moves time, a test waits until the timer it means is set (`clock.armed(delay)`: a timer
  due `delay` from now): a deadline set after a thread's round trip (a journal read) would otherwise
  begin after the advance, and the test would race it.
- `real_fail_after(seconds)` bounds a test in real time (a thread timer cancels the scope through
  `call_soon_threadsafe`): `anyio.fail_after` is virtual here, so it cannot bound anything real.
"""

from __future__ import annotations

import asyncio
import math
import selectors
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio

MAX_REAL_WAIT_S = 0.005
_QUIET_ROUNDS = 3
_MAX_ROUNDS = 10_000


class _CappedSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None:
            timeout = min(timeout, MAX_REAL_WAIT_S)
        return super().select(timeout)  # type: ignore[no-any-return]


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock moves only by `advance` (see the module's docstring)."""

    def __init__(self) -> None:
        super().__init__(selector=_CappedSelector())
        self.virtual_now = 1_000.0  # any start; far from 0 so nothing mistakes it for "unset"

    def time(self) -> float:
        return self.virtual_now


class Clock:
    """The test's handle on the running `VirtualClockLoop`."""

    def __init__(self, loop: VirtualClockLoop) -> None:
        self.loop = loop

    @classmethod
    def current(cls) -> Clock:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualClockLoop), (
            f"not on a virtual clock ({type(loop).__name__}): see tests/helpers/clock.py"
        )
        return cls(loop)

    def now(self) -> float:
        return self.loop.virtual_now

    def timers(self) -> list[float]:
        """When each live timer is due (virtual)."""
        return sorted(handle.when() for handle in self.loop._scheduled if not handle.cancelled())  # type: ignore[attr-defined]

    def next_timer(self) -> float | None:
        """When the earliest live timer is due (virtual), if there is one."""
        return next(iter(self.timers()), None)

    def armed(self, delay: float) -> bool:
        """Whether a timer is due `delay` seconds from now: a sleep or a deadline of that length began
        at the current virtual time (what a test waits for before it moves time)."""
        return any(math.isclose(when, self.now() + delay, abs_tol=1e-9) for when in self.timers())

    async def advance(self, seconds: float) -> None:
        """Moves virtual time on by `seconds` and runs what became due (and what that made ready)."""
        assert seconds >= 0, seconds
        self.loop.virtual_now += seconds
        await self.settle()

    async def settle(self) -> None:
        """Yields until the loop is quiet at the current virtual time: nothing ready, no timer due."""
        quiet = 0
        for _ in range(_MAX_ROUNDS):
            await asyncio.sleep(0)
            due = self.next_timer()
            if not self.loop._ready and (due is None or due > self.now()):  # type: ignore[attr-defined]
                quiet += 1
                if quiet >= _QUIET_ROUNDS:
                    return
            else:
                quiet = 0
        raise AssertionError(f"the loop never went quiet in {_MAX_ROUNDS} rounds")

    @contextmanager
    def real_fail_after(self, seconds: float) -> Iterator[anyio.CancelScope]:
        """Like `anyio.fail_after`, in real time: raises TimeoutError if the block takes `seconds`."""
        fired = threading.Event()
        with anyio.CancelScope() as scope:

            def expire() -> None:
                fired.set()
                scope.cancel()

            def from_thread() -> None:
                try:
                    self.loop.call_soon_threadsafe(expire)
                except RuntimeError:  # the loop closed meanwhile
                    pass

            timer = threading.Timer(seconds, from_thread)
            timer.daemon = True
            timer.start()
            began = time.monotonic()
            try:
                yield scope
            finally:
                timer.cancel()
        if fired.is_set():
            raise TimeoutError(f"still not done after {time.monotonic() - began:.1f} real seconds")


def virtual_backend() -> tuple[str, dict[str, Any]]:
    """The `anyio_backend` value of a test module on the virtual clock."""
    return "asyncio", {"loop_factory": VirtualClockLoop}
