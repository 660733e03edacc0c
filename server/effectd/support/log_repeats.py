"""A fault that repeats must not flood the log: identical records are let through at most once per
interval, the next one saying how many were held back.

Records are identical when they come from the same logger at the same level with the same message
template (`record.msg`, before its arguments are filled in) and the same exception type and text: the
same failure for a different connection or request is one error. `effectd serve` installs
`RepeatFilter` on its log handler, so it covers effectd's own records and those of uvicorn and asyncio.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

INTERVAL_S = 1.0
_KEYS = 1024  # the distinct errors remembered (least recently seen forgotten first)


@dataclass
class _Seen:
    last_logged: float
    held: int = 0


class RepeatFilter(logging.Filter):
    """Lets the first of identical records through, then at most one per `interval_s`; that one ends with
    `(N more like this in the last S s)` and carries no traceback already shown."""

    def __init__(self, interval_s: float = INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._clock = clock
        self._seen: OrderedDict[tuple[object, ...], _Seen] = OrderedDict()
        self.held_back = 0  # records held back in all

    def filter(self, record: logging.LogRecord) -> bool:
        now = self._clock()
        key = _key(record)
        seen = self._seen.get(key)
        if seen is None:
            self._seen[key] = _Seen(now)
            while len(self._seen) > _KEYS:
                self._seen.popitem(last=False)
            return True
        self._seen.move_to_end(key)
        if now - seen.last_logged < self.interval_s:
            seen.held += 1
            self.held_back += 1
            return False
        if seen.held:
            record.msg = f"{record.msg} ({seen.held} more like this in the last {now - seen.last_logged:.1f} s)"
            record.exc_info, record.exc_text = None, None  # the traceback was shown with the first one
        seen.last_logged, seen.held = now, 0
        return True


def _key(record: logging.LogRecord) -> tuple[object, ...]:
    exc = record.exc_info[1] if record.exc_info else None
    return (record.name, record.levelno, str(record.msg), type(exc).__name__ if exc else None, str(exc or ""))


def install(handler: logging.Handler, interval_s: float = INTERVAL_S) -> RepeatFilter:
    """Puts a RepeatFilter on `handler` (every record that reaches it, whichever logger sent it)."""
    repeats = RepeatFilter(interval_s)
    handler.addFilter(repeats)
    return repeats
