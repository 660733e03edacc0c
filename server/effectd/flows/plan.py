"""Planning a submitted flow: every check made before anything is written, and the effects to dispatch.

In order: the graph (`graph.check_graph`), each step's effect arguments (`specs.build_spec`, the
error naming the step), the templates (`templates.check_templates`), and the idempotency keys (no
two steps of a flow share one). Each step becomes an effect in the group named by the flow id,
depending on the effects of the steps it needs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from effectd.config.settings import Settings
from effectd.errors import InvalidRequestError
from effectd.flows.fanout import check_items, has_item_templates
from effectd.flows.graph import check_graph
from effectd.flows.models import Step, StepRef
from effectd.flows.templates import check_templates, parse_templates, templated_texts
from effectd.model.records import EffectSpec, new_id
from effectd.model.specs import build_spec


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
            "approval": step.approval,
            "depends_on": [effect_ids[need] for need in dict.fromkeys(step.need_ids)],
        }
        try:
            specs.append(build_spec(settings, request))
        except InvalidRequestError as exc:
            raise type(exc)(f"step {step.id!r}: {exc}") from None
    for step, spec in zip(steps, specs, strict=True):
        if step.pipes and spec.prompt_via == "stdin":
            raise InvalidRequestError(
                f"step {step.id!r}: harness {spec.harness!r} takes its prompt on stdin, so it cannot also take a "
                f"piped need ({step.pipes[0]!r})"
            )
    templated = check_templates(steps, ancestors)
    for step in steps:
        check_for_each(step, ancestors[step.id])
        check_pipe(step)
        if step.pipes and settings.runner != "local":
            raise InvalidRequestError(
                f"step {step.id!r} pipes from {step.pipes[0]!r}: pipes need the local runner (this server runs "
                f"effects on {settings.runner!r}); need {step.pipes[0]!r} without `pipe`, and read its output after it"
            )
    specs = [
        spec.model_copy(
            update={
                "templated": templated[s.id],
                "for_each": s.for_each,
                "pipe_from": effect_ids[s.pipes[0]] if s.pipes else None,
            }
        )
        for s, spec in zip(steps, specs, strict=True)
    ]
    keys: dict[str, str] = {}
    for step in steps:
        if step.key is not None and step.key in keys:
            raise InvalidRequestError(f"steps {keys[step.key]!r} and {step.id!r} both use key {step.key!r}")
        if step.key is not None:
            keys[step.key] = step.id
    refs = [StepRef(step.id, effect_ids[step.id], tuple(dict.fromkeys(step.need_ids))) for step in steps]
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


def check_pipe(step: Step) -> None:
    """At most one piped need, and then no `stdin` of its own (nor a prompt sent on stdin), no `for_each`,
    and no template naming the piped step (it is still running when this one starts)."""
    pipes = step.pipes
    if not pipes:
        return
    where = f"step {step.id!r}"
    if len(pipes) > 1:
        raise InvalidRequestError(
            f"{where} pipes from {', '.join(map(repr, pipes))}; a step has one stdin, so at most one piped need"
        )
    if step.stdin is not None:
        raise InvalidRequestError(
            f"{where} has both `stdin` and a piped need ({pipes[0]!r}); its stdin is that step's output: drop `stdin`"
        )
    if step.for_each is not None:
        raise InvalidRequestError(f"{where}: a step with `for_each` cannot also take a piped need ({pipes[0]!r})")
    for name, text in templated_texts(step):
        if any(ref.step == pipes[0] for ref in parse_templates(text, where)):
            raise InvalidRequestError(
                f"{where} {name}: the template names step {pipes[0]!r}, which is piped into it and still runs when "
                f"it starts; read its output from stdin, or need {pipes[0]!r} without `pipe`"
            )
