"""Fan-out: a flow step with `for_each` becomes one effect per item once its needs are met.

`for_each` is a JSON list, or a text holding templates (`{{steps.plan.result.files}}`) that renders to
one, at most MAX_ITEMS items. When the step's needs are met its own effect (the parent) does not run
a process: it fills `{{item}}`, `{{item.FIELD}}` and `{{index}}` in a copy of its arguments per item
and dispatches those children in one journal commit, all in the flow's group, so the flow's
`max_concurrency`, the server's limits and the flow's policy apply to them as to any step. The
parent holds no slot while it waits.

The parent ends once every child has: `succeeded` when all did, `failed` when one failed or timed out
(the first in item order is named), `cancelled` when it was cancelled itself (its children are
cancelled with it). Its result is the list of the children's results, and its output their outputs
joined by newlines, both in item order. A `for_each` that is not a list or holds too many items fails
the step, naming what it got. An empty list succeeds at once with no children.

After a restart the parent finds its children in the journal (the commit made all or none of them)
and waits for them again; it never dispatches them twice.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio

from effectd.errors import InvalidRequestError
from effectd.flows.models import Flow, Flows
from effectd.flows.resume import take_cached
from effectd.flows.templates import fill, parse_templates
from effectd.harness.profiles import HarnessProfile
from effectd.journal.store import Journal
from effectd.model.records import EffectSpec, new_id
from effectd.model.specs import check_argv
from effectd.supervisor.effect import CancelRequest, Effect
from effectd.supervisor.events import Outcome
from effectd.supervisor.registry import Registry

MAX_ITEMS = 1000
ITEM_TEMPLATE = re.compile(r"\{\{\s*(?:(?P<item>item(?:\.[^.\s{}]+)*)|(?P<index>index))\s*\}\}")
_FAILED = frozenset({"timeout", "idle_timeout"})  # a child cancelled for these failed

DispatchMany = Callable[[Sequence[tuple[str, EffectSpec]], str | None], Awaitable[list[Effect]]]


def has_item_templates(text: str) -> bool:
    return ITEM_TEMPLATE.search(text) is not None


def check_items(items: Any, where: str) -> list[Any]:
    """`items` if it is a list of at most MAX_ITEMS; ValueError naming what it is otherwise."""
    if not isinstance(items, list):
        shown = json.dumps(items, ensure_ascii=False)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise ValueError(f"{where} must be a JSON list, not {type(items).__name__} {shown}")
    if len(items) > MAX_ITEMS:
        raise ValueError(f"{where} holds {len(items)} items; a step fans out over at most {MAX_ITEMS}")
    return items


def fill_item(text: str, item: Any, index: int) -> str:
    """`text` with `{{item}}`, `{{item.FIELD...}}` and `{{index}}` filled (a string as it is, else JSON)."""

    def value(match: re.Match[str]) -> str:
        if match["index"] is not None:
            return str(index)
        picked = item
        path = match["item"].split(".")[1:]
        for depth, name in enumerate(path):
            if isinstance(picked, Mapping) and name in picked:
                picked = picked[name]
            elif isinstance(picked, list) and name.isdigit() and int(name) < len(picked):
                picked = picked[int(name)]
            else:
                raise ValueError(f"{{{{item.{'.'.join(path)}}}}}: item {index} has no {'.'.join(path[: depth + 1])!r}")
        return picked if isinstance(picked, str) else json.dumps(picked, ensure_ascii=False)

    return ITEM_TEMPLATE.sub(value, text)


def child_spec(harnesses: Mapping[str, HarnessProfile], parent: EffectSpec, index: int, item: Any) -> EffectSpec:
    """The spec of the child of `parent` for item `index`. ValueError when the item lacks a field named."""

    def filled(text: str) -> str:
        return fill_item(text, item, index)

    prompt = filled(parent.prompt) if parent.prompt is not None else None
    args = [filled(arg) for arg in parent.args]
    if parent.kind == "harness":
        profile = harnesses.get(parent.harness or "")
        if profile is None:
            raise ValueError(f"harness profile {parent.harness!r} is no longer configured")
        command = profile.build_argv(prompt or "", args)
    else:
        command = [filled(arg) for arg in parent.command]
    check_argv(command, f"the command line of item {index}")
    return parent.model_copy(
        update={
            "command": command,
            "prompt": prompt,
            "args": args,
            "stdin": filled(parent.stdin) if parent.stdin is not None else None,
            "label": f"{parent.label or parent.step_id}[{index}]",
            "key": None,
            "depends_on": [],
            "for_each": None,
            "start_approval": False,  # the step's start was allowed once, for all of its items
            "item_index": index,
        }
    )


class FanOut:
    """A flow step's work when it runs no process of its own (resumed, or fanned out), given what it
    needs by name: `flows` (a flow by id, a step's rendered arguments), `registry` (the effects and
    their output), `journal` (a group's effect ids), `harnesses` (a child's argv), `dispatch_many`
    (the supervisor's, for the children), `closing` (whether the server is stopping)."""

    def __init__(
        self,
        *,
        flows: Flows,
        registry: Registry,
        journal: Journal,
        harnesses: Mapping[str, HarnessProfile],
        dispatch_many: DispatchMany,
        closing: Callable[[], bool],
    ) -> None:
        self._flows, self._registry, self._journal = flows, registry, journal
        self._harnesses, self._dispatch_many, self._closing = harnesses, dispatch_many, closing

    async def instead_of_running(self, effect: Effect) -> Outcome | None:
        """A flow step's outcome without a process of its own: taken from the flow it resumes, or its
        fan-out's. None: the step runs."""
        taken = await take_cached(effect, flows=self._flows, registry=self._registry)
        if taken is not None or effect.spec.for_each is None or effect.spec.item_index is not None:
            return taken
        return await self.fan_out(effect)

    async def items_of(self, flow: Flow, spec: EffectSpec) -> list[Any]:
        """The items of a fan-out step, its `for_each` rendered from the steps it needs. ValueError says why not."""
        if isinstance(spec.for_each, list):
            return check_items(spec.for_each, "for_each")
        text = spec.for_each or ""
        refs = parse_templates(text, f"step {spec.step_id!r} for_each")
        effect_of = {ref.step_id: ref.effect_id for ref in flow.steps}
        sources = {step: await self._registry.get(effect_of[step]) for step in dict.fromkeys(r.step for r in refs)}
        outputs = {
            step: source.output.read(0, source.output.size)[0].rstrip()
            for step, source in sources.items()
            if any(r.step == step and r.what == "output" for r in refs)
        }
        results = {step: source.result for step, source in sources.items()}
        workspaces = {step: source.state.workspace for step, source in sources.items()}
        rendered = fill(text, outputs, results, workspaces)
        try:
            items = json.loads(rendered)
        except ValueError:
            shown = rendered if len(rendered) <= 80 else rendered[:77] + "..."
            raise ValueError(f"for_each {text!r} rendered to {shown!r}, not JSON; it must be a JSON list") from None
        return check_items(items, f"for_each {text!r}")

    async def children_of(self, flow: Flow, step_id: str | None = None) -> list[Effect]:
        """The fan-out children of the flow's steps (of `step_id` only, if given), from memory and the journal."""
        steps = set(flow.effect_ids)
        ids = [i for i in await self._journal.group_ids(flow.flow_id) if i not in steps]
        children = [e for e in await self._registry.get_many(ids) if e.spec.item_index is not None]
        if step_id is not None:
            children = [e for e in children if e.spec.step_id == step_id]
        return sorted(children, key=lambda e: e.spec.item_index or 0)

    async def fanned_out(self, flow: Flow, effects: Mapping[str, Effect]) -> dict[str, list[Effect]]:
        """The children of the flow's fan-out steps, by step id, in item order (nothing to read for a flow
        without `for_each`)."""
        if not any(effects[i].spec.for_each is not None for i in flow.effect_ids):
            return {}
        grouped: dict[str, list[Effect]] = {}
        for child in await self.children_of(flow):
            grouped.setdefault(child.spec.step_id or "", []).append(child)
        return grouped

    async def fan_out(self, effect: Effect) -> Outcome | None:
        """Expands a `for_each` step into its children (or finds them after a restart), waits for them all,
        and returns the step's outcome. None when it was cancelled before it expanded (the driver ends it)."""
        spec = effect.spec
        if effect.cancel is not None or spec.flow_id is None:
            return None
        flow = await self._flows.get(spec.flow_id)
        children = await self.children_of(flow, spec.step_id)
        if not children:
            try:
                items = await self.items_of(flow, spec)
                specs = [child_spec(self._harnesses, spec, index, item) for index, item in enumerate(items)]
            except (ValueError, InvalidRequestError) as exc:
                return Outcome("failed", error=f"for_each: {exc}")
            if not specs:
                return Outcome("succeeded", result=[])
            if effect.cancel is not None or self._closing():
                return None
            children = await self._dispatch_many([(new_id("eff_"), s) for s in specs], effect.run_id)
        for child in children:
            flow.effects.setdefault(child.effect_id, child)  # the flow's policy reaches them
        await _wait(effect, children)
        if self._closing() and effect.cancel is None:
            return None  # the server stops: the driver ends the step (or leaves it queued for the next server)
        return _outcome(effect, children)


async def _wait(effect: Effect, children: Sequence[Effect]) -> None:
    """Waits until every child has ended; a cancel of the parent cancels them all."""

    async def on_cancel() -> None:
        await effect.cancel_event.wait()
        cancel = effect.cancel
        for child in children:
            if cancel is not None:
                child.request_cancel(CancelRequest(cancel.reason, cancel.message, None))

    async with anyio.create_task_group() as tg:
        tg.start_soon(on_cancel)
        for child in children:
            await child.done.wait()
        tg.cancel_scope.cancel()


def _outcome(effect: Effect, children: Sequence[Effect]) -> Outcome:
    effect.output.reopen()
    for index, child in enumerate(children):
        text = child.output.read(0, child.output.size)[0].rstrip("\n")
        effect.output.write((("\n" if index else "") + text).encode())
    result = [child.result for child in children]
    failed = next((c for c in children if c.status == "failed" or c.cancel_reason in _FAILED), None)
    if failed is not None:
        why = failed.state.error or failed.cancel_reason or failed.status
        return Outcome("failed", error=f"item {failed.spec.item_index} failed: {why}", result=result)
    cancel = effect.cancel
    stopped = next((c for c in children if c.status == "cancelled"), None)
    if cancel is None and stopped is not None:  # stopped on its own (a cancel_effect of the child, a restart)
        cancel = CancelRequest(stopped.cancel_reason or "user", f"item {stopped.spec.item_index} cancelled", None)
    if cancel is not None:
        return Outcome("cancelled", result=result, cancel=CancelRequest(cancel.reason, cancel.message, None))
    bad = next((c for c in children if c.status != "succeeded"), None)
    if bad is not None:
        return Outcome("failed", error=f"item {bad.spec.item_index} {bad.status}", result=result)
    return Outcome("succeeded", result=result)
