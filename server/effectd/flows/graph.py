"""Checking a flow's graph: at least one step, at most MAX_STEPS, unique ids, known needs, no cycle.

The ordering and the cycle detection are the standard library's `graphlib.TopologicalSorter`; a
step's ancestors (what it needs, directly or transitively) are gathered in topological order, so
every need's ancestors are known before the steps that need it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from graphlib import CycleError, TopologicalSorter

from effectd.errors import InvalidRequestError
from effectd.flows.models import MAX_STEPS, Step


def check_graph(steps: Sequence[Step]) -> dict[str, frozenset[str]]:
    """Checks the steps form a DAG; returns each step's ancestors (what it needs, directly or transitively)."""
    if not steps:
        raise InvalidRequestError("a flow needs at least one step: give `steps` as a list of step objects")
    if len(steps) > MAX_STEPS:
        raise InvalidRequestError(f"a flow holds at most {MAX_STEPS} steps, not {len(steps)}")
    needs: dict[str, tuple[str, ...]] = {}
    for step in steps:
        if step.id in needs:
            raise InvalidRequestError(f"duplicate step id {step.id!r}: every step of a flow needs its own id")
        needs[step.id] = tuple(dict.fromkeys(step.need_ids))
    for step in steps:
        for need in step.need_ids:
            if need not in needs:
                raise InvalidRequestError(
                    f"step {step.id!r} needs unknown step {need!r}; the steps of this flow are: {', '.join(needs)}"
                )
    try:
        order = list(TopologicalSorter(needs).static_order())
    except CycleError as exc:
        cycle = _cycle_named(exc.args[1], {step_id: i for i, step_id in enumerate(needs)})
        raise InvalidRequestError(
            f"the steps' needs form a cycle: {' -> '.join(cycle)} (each needs the next); a flow must be acyclic"
        ) from None
    ancestors: dict[str, frozenset[str]] = {}
    for step_id in order:
        ancestors[step_id] = frozenset(needs[step_id]).union(*(ancestors[need] for need in needs[step_id]))
    return ancestors


def _cycle_named(cycle: Sequence[str], position: Mapping[str, int]) -> list[str]:
    """A cycle as `CycleError` gives it (each step needed by the next) turned into `a -> b -> a` (each
    needs the next), starting at the step given first in the flow."""
    loop = list(reversed(cycle))[:-1]
    first = min(range(len(loop)), key=lambda i: position[loop[i]])
    loop = loop[first:] + loop[:first]
    return [*loop, loop[0]]
