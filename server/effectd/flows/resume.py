"""Resume: a new flow that takes from an earlier one every step that would only do the same work again.

`dispatch_flow(..., resume=OLD)` runs a new flow (a new flow id, new effects). When one of its steps
is about to start (its needs met, a slot held), `take_cached` decides whether it is taken from flow
OLD instead of run. All three must hold:

- the step of the same id in OLD `succeeded`, and its output is still there (not removed by
  `effectd prune`: a step taken is the old effect's output, so one whose output is gone runs again);
- every step it needs was itself taken (is `cached`), so the outputs its templates read are OLD's
  (and so a step whose templates read a pruned output runs too: that need ran again);
- its arguments are identical: the spec (but for what names the flow: depends_on, pipe_from, group,
  flow_id, key, label) and its argv and stdin after templating, each filled from its own flow's steps;
  the argv is compared with the one the old effect actually ran (its record's `command`).

A taken step ends `succeeded` at once, without a process, with `cached: true` and `reused_from` (the
effect that ran; following a chain of resumes back to it). Its exit code, result, workspace (the
old branch, with isolation) and `command` (the argv that ran, templates filled) are that effect's,
in its terminal event. Its output is not copied: the
step's log file is a hard link to the old effect's, so stream_effect, output_tail, templates and a
restarted server all read the same bytes from disk, stored once. Where a hard link cannot be made
the step simply runs.

Anything unexpected (the old flow's effects unreadable, a template of the old step that no longer
fills) makes the step run: resume only ever saves work, it never fails a step.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from effectd.errors import InvalidRequestError
from effectd.flows.models import Flows
from effectd.journal.store import Journal
from effectd.supervisor.effect import Effect
from effectd.supervisor.events import Outcome
from effectd.supervisor.registry import Registry

log = logging.getLogger("effectd")

# What names the flow rather than the work (the effects it depends on or pipes from are compared as steps).
_NOT_COMPARED = frozenset({"depends_on", "pipe_from", "group", "flow_id", "key", "label"})


async def check_resume(journal: Journal, resume: str, flow_id: str) -> None:
    """InvalidRequestError when `resume` names no flow of the journal, or names the new flow itself."""
    if resume == flow_id:
        raise InvalidRequestError(
            f"resume {resume!r} names the new flow itself; give the new flow another `flow_id` (or none)"
        )
    if await journal.flow(resume) is None:
        raise InvalidRequestError(
            f"resume: unknown flow id {resume!r}: no flow with this id in the journal; give the id of an earlier flow"
        )


def same_spec(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """The two specs (as journaled) ask for the same work."""
    return {k: v for k, v in old.items() if k not in _NOT_COMPARED} == {
        k: v for k, v in new.items() if k not in _NOT_COMPARED
    }


async def take_cached(effect: Effect, *, flows: Flows, registry: Registry) -> Outcome | None:
    """The outcome of a step taken from the flow its flow resumes, or None when it must run: `flows`
    names the flows and renders their steps, `registry` holds the effects and their output files."""
    try:
        return await _take(effect, flows, registry)
    except Exception as exc:  # resume only saves work: whatever goes wrong, the step runs
        log.warning("effect %s: not taken from the resumed flow, it runs: %s", effect.effect_id, exc)
        return None


async def _take(effect: Effect, flows: Flows, registry: Registry) -> Outcome | None:
    spec = effect.spec
    if spec.flow_id is None or spec.step_id is None or spec.item_index is not None or effect.cancel is not None:
        return None  # a fan-out child is never taken alone: its step is, whole
    flow = await flows.get(spec.flow_id)
    if flow.resumed_from is None:
        return None
    old_flow = await flows.get(flow.resumed_from)
    old_id = next((ref.effect_id for ref in old_flow.steps if ref.step_id == spec.step_id), None)
    if old_id is None:
        return None
    old = await registry.get(old_id)
    if old.status != "succeeded" or old.state.output_pruned:
        return None
    needs = await registry.get_many(spec.depends_on)
    if not all(need.state.cached for need in needs):
        return None
    if not same_spec(old.state.spec, effect.state.spec):
        return None
    argv, stdin = await flows.render(effect)
    old_argv, old_stdin = await flows.render(old)
    if old.state.started_at is not None or old.state.cached:
        old_argv = old.state.command  # what it ran (a fan-out step runs nothing: its own is only rendered)
    if (argv, stdin) != (old_argv, old_stdin):
        return None
    if not _share_output(registry, old, effect):
        return None
    return Outcome(
        "succeeded",
        old.state.exit_code,
        old.state.signal,
        result=old.result,
        workspace=old.state.workspace,
        reused_from=old.state.reused_from or old.effect_id,
        command=argv,
    )


def _share_output(registry: Registry, old: Effect, effect: Effect) -> bool:
    """Gives `effect` the old effect's output: its log file becomes a hard link to the old one."""
    source, target = registry.log_path(old.effect_id), registry.log_path(effect.effect_id)
    if source.exists() or old.state.output_bytes > 0:  # a log that printed something must be there
        try:
            target.unlink(missing_ok=True)
            os.link(source, target)
        except OSError as exc:  # gone too (pruned meanwhile, removed by hand): the step runs
            log.info("effect %s: cannot link the output of %s (%s); it runs", effect.effect_id, old.effect_id, exc)
            return False
    previous, effect.output = effect.output, registry.existing_output(effect.effect_id)
    previous.close()  # wakes whoever waited on the empty log
    return True
