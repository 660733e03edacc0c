"""Admission: how many effects may run at once, overall, per harness profile and per group.

Each limit is an anyio capacity limiter (first in, first out). An effect holds the limiters of its
group, then of its harness, then the global one, in that order, while it runs.
"""

from __future__ import annotations

from collections.abc import Mapping

import anyio

from effectd.model.records import EffectSpec


class Limits:
    def __init__(self, max_concurrency: int, harness_limits: Mapping[str, int] | None = None) -> None:
        self._slots = anyio.CapacityLimiter(max_concurrency)
        self._harness = {name: anyio.CapacityLimiter(n) for name, n in (harness_limits or {}).items()}
        self._groups: dict[str, anyio.CapacityLimiter] = {}

    def limit_group(self, group: str, max_concurrency: int) -> None:
        """Caps how many effects of `group` run at once (the first cap given for a group stands)."""
        self._groups.setdefault(group, anyio.CapacityLimiter(max_concurrency))

    def apply_spec(self, spec: EffectSpec) -> None:
        """A dispatch that gives `group_max_concurrency` caps its group (journaled with the effect)."""
        if spec.group is not None and spec.group_max_concurrency is not None:
            self.limit_group(spec.group, spec.group_max_concurrency)

    def for_spec(self, spec: EffectSpec) -> list[anyio.CapacityLimiter]:
        """The limiters an effect must hold to run, in the order they are taken."""
        limiters = []
        if spec.group is not None and spec.group in self._groups:
            limiters.append(self._groups[spec.group])
        if spec.harness is not None and spec.harness in self._harness:
            limiters.append(self._harness[spec.harness])
        limiters.append(self._slots)
        return limiters
