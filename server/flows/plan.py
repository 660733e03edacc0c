"""Planning a submitted flow: every check made before anything is written, and the effects to dispatch.

In order: the graph (`graph.check_graph`), each step's effect arguments (`specs.build_spec`, the
error naming the step), the templates (`templates.check_templates`), and the idempotency keys (no
two steps of a flow share one). Each step becomes an effect in the group named by the flow id,
depending on the effects of the steps it needs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from effectd.config import Settings
from effectd.errors import InvalidRequestError
from effectd.flows.fanout import check_items, has_item_templates
from effectd.flows.graph import check_graph
from effectd.flows.models import Step, StepRef
from effectd.flows.templates import check_templates, parse_templates, templated_texts
from effectd.models import EffectSpec, new_id
from effectd.specs import build_spec


def plan_steps(settings: Settings, steps: Sequence[Step], flow_id: str) -> tuple[list[StepRef], list[EffectSpec]]:
    """Checks the steps of flow `flow_id`; returns each step's ref (with a new effect id) and effect spec.

    InvalidRequestError names the first problem found.
    """
    ancestors = check_graph(steps)
    effect_ids = {step.id: new_id("eff_") for step in steps}
    specs = []
    for step in steps:
        request = step.effect_fields() | {
            "group": flow_id,
            "flow_id": flow_id,
            "step_id": step.id,
            "depends_on": [effect_ids[need] for need in dict.fromkeys(step.needs)],
        }
        try:
            specs.append(build_spec(settings, request))
        except InvalidRequestError as exc:
            raise type(exc)(f"step {step.id!r}: {exc}") from None
    templated = check_templates(steps, ancestors)
    for step in steps:
        check_for_each(step, ancestors[step.id])
    specs = [
        spec.model_copy(update={"templated": templated[s.id], "for_each": s.for_each})
        for s, spec in zip(steps, specs, strict=True)
    ]
    keys: dict[str, str] = {}
    for step in steps:
        if step.key is not None and step.key in keys:
            raise InvalidRequestError(f"steps {keys[step.key]!r} and {step.id!r} both use key {step.key!r}")
        if step.key is not None:
            keys[step.key] = step.id
    refs = [StepRef(step.id, effect_ids[step.id], tuple(dict.fromkeys(step.needs))) for step in steps]
    return refs, specs


def check_for_each(step: Step, ancestors: frozenset[str]) -> None:
    """A step's `for_each`: a list of at most MAX_ITEMS, or a text whose templates name steps it needs (a
    text without any must be a JSON list); `{{item}}` and `{{index}}` only in a step with `for_each`."""
    where = f"step {step.id!r}"
    if step.for_each is None:
        for name, text in templated_texts(step):
            if has_item_templates(text):
                raise InvalidRequestError(
                    f"{where} {name}: {{{{item}}}} and {{{{index}}}} belong to a step with `for_each` "
                    "(a list to fan out over)"
                )
        return
    try:
        if isinstance(step.for_each, list):
            check_items(step.for_each, "for_each")
            return
        refs = parse_templates(step.for_each, f"{where} for_each")
        if not refs:
            check_items(json.loads(step.for_each), "for_each")
    except ValueError as exc:
        raise InvalidRequestError(f"{where}: {exc}") from None
    for ref in refs:
        if ref.step not in ancestors:
            raise InvalidRequestError(
                f"{where} for_each: the template names step {ref.step!r}, which step {step.id!r} does not need; "
                f"add {ref.step!r} to its `needs`"
            )
