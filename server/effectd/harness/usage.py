"""The cost and token figures a harness CLI reports, checked before anything counts them.

They are untrusted input: budgets add them up, so a negative, NaN, infinite or absurd figure would
lower or poison the sum (a budget that never stops, or a record that is no longer JSON). Such a figure
is refused: left out, as if never reported, and named in the run's ``usage_refused``.
"""

from __future__ import annotations

from typing import Any, TypeGuard

MAX_RUN_COST_USD = 100_000.0
"""The most a figure of cost (US dollars) may be; anything above is taken for a bogus figure."""

MAX_RUN_TOKENS = 10**10
"""The most a token count may be; anything above is taken for a bogus figure."""


def _number(value: object) -> TypeGuard[int | float]:
    """True when ``value`` is a JSON number (not a bool)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _within(value: object, bound: float) -> bool:
    """True when ``value`` is a number from 0 to ``bound``: so neither negative, NaN nor infinite."""
    return _number(value) and 0 <= value <= bound


def usage_cost(value: object) -> float | None:
    """``value`` as a cost when it is a number from 0 to ``MAX_RUN_COST_USD``, else None."""
    return float(value) if _number(value) and _within(value, MAX_RUN_COST_USD) else None


def usage_count(value: object) -> int | None:
    """``value`` when it is a whole number from 0 to ``MAX_RUN_TOKENS``, else None."""
    return value if isinstance(value, int) and _within(value, MAX_RUN_TOKENS) else None


def usage_tokens(usage: object) -> int | None:
    """The tokens a usage object counts against a budget: ``input_tokens`` plus ``output_tokens`` (cache
    reads and writes are not counted; nor is a bogus count, see ``usage_count``); None when it has neither."""
    fields = usage if isinstance(usage, dict) else {}
    counts = [n for name in ("input_tokens", "output_tokens") if (n := usage_count(fields.get(name))) is not None]
    return sum(counts) if counts else None


class UsageCheck:
    """Checks one run's figures as its parser reads them, keeping a note of each one refused."""

    def __init__(self) -> None:
        self.refused: list[str] = []  # each refused figure, once: "<field> <value> refused: <what is allowed>"

    def cost(self, value: object, field: str) -> float | None:
        """``value`` as a cost; None when it is no number, or a bogus one (refused)."""
        cost = usage_cost(value)
        if cost is None and _number(value):
            self._refuse(field, value, f"a cost is a number of US dollars from 0 to {MAX_RUN_COST_USD:.0f}")
        return cost

    def usage(self, value: object, field: str) -> Any:
        """``value``, a usage object, without its bogus numbers (refused); its objects and arrays are
        walked, since each number in it reaches the record."""
        if isinstance(value, dict):
            return {
                name: self.usage(item, f"{field}.{name}")
                for name, item in value.items()
                if not self._refused_count(item, f"{field}.{name}")
            }
        if isinstance(value, list):
            return [
                self.usage(item, f"{field}[{i}]")
                for i, item in enumerate(value)
                if not self._refused_count(item, f"{field}[{i}]")
            ]
        return value

    def _refused_count(self, value: object, field: str) -> bool:
        """True (and noted) when ``value`` is a number but not a count from 0 to ``MAX_RUN_TOKENS``."""
        if not _number(value) or _within(value, MAX_RUN_TOKENS):
            return False
        self._refuse(field, value, f"a token count is a number from 0 to {MAX_RUN_TOKENS}")
        return True

    def _refuse(self, field: str, value: object, allowed: str) -> None:
        note = f"{field} {value!r} refused: {allowed}"
        if note not in self.refused:
            self.refused.append(note)
