"""Flows: a DAG of steps submitted at once, each step an effect that starts when the steps it needs succeeded.

The supervisor does the scheduling (a step's `depends_on` are the effects of its `needs`, all in the
group named by the flow id). This module checks a flow before anything is written, fills a step's
templates when it starts, applies the flow's policy as steps end, journals FLOW_REQUESTED and
exactly one FLOW_COMPLETED per flow, picks unfinished flows up again after a restart, and reports
the flow record.

Flow status, decided once every step is terminal:

- `succeeded`: every step succeeded.
- `cancelled`: some step was stopped on purpose: cancelled with reason `user`, `client_cancelled`
  or `shutdown` (cancel_effect, cancel_group on the flow id, an abandoned foreground call, a server
  stop). This wins over `failed`: a flow someone stopped is reported as stopped.
- `failed`: otherwise: some step failed, timed out (`timeout`, `idle_timeout`) or was skipped
  because a step it needs did not succeed; `fail_fast` cancellations are consequences, not causes.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import anyio
from anyio.abc import TaskGroup
from pydantic import BaseModel, Field

from effectd.arguments import EffectArguments
from effectd.config import Settings
from effectd.errors import ConflictError, InvalidRequestError, UnknownEffectError
from effectd.journal import Event, Journal
from effectd.models import CancelReason, EffectSpec, Status, new_id, now_iso, seconds_between
from effectd.specs import build_spec, check_argv
from effectd.supervisor import Effect, Supervisor

log = logging.getLogger("effectd")

Policy = Literal["fail_fast", "continue"]
FlowStatus = Literal["running", "succeeded", "failed", "cancelled"]

MAX_STEPS = 1000
STOPPED_ON_PURPOSE: frozenset[str] = frozenset({"user", "client_cancelled", "shutdown"})
"""Cancel reasons that make a flow `cancelled` rather than `failed`."""

_STEP_ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_-]*$"
StepId = Annotated[
    str, Field(min_length=1, max_length=64, pattern=_STEP_ID_PATTERN, description="letters, digits, _ and -")
]


class Step(EffectArguments):
    """One step of a flow: the effect to run, its id in the flow, and the steps it needs first.

    `prompt`, `command`, `args` and `stdin` may hold templates filled when the step starts:
    `{{steps.ID.output}}`, `{{steps.ID.result}}`, `{{steps.ID.result.FIELD}}` (ID: a step this
    one needs, directly or transitively).
    """

    _misplaced: ClassVar[dict[str, str]] = {
        "background": "a flow-level argument of dispatch_flow",
        "wait_s": "a flow-level argument of dispatch_flow",
        "run_id": "a flow-level argument: every step runs in the flow's run",
        "group": "the flow id is the group of its steps",
        "depends_on": "name the step ids this step needs in `needs`",
        "group_max_concurrency": "use the flow's `max_concurrency`",
    }

    id: StepId
    needs: Annotated[
        list[StepId], Field(max_length=MAX_STEPS, description="ids of the steps that must succeed first")
    ] = []


class FlowStepRecord(BaseModel):
    """One step as the flow record reports it."""

    step_id: str
    effect_id: str
    needs: list[str]
    status: Status
    label: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None
    exit_code: int | None = None
    cancel_reason: CancelReason | None = None
    error: str | None = None


class FlowRecord(BaseModel):
    """A flow as dispatch_flow and poll_flow report it (CONTRACT.md, `dispatch_flow`)."""

    flow_id: str
    run_id: str
    policy: Policy
    max_concurrency: int | None = None
    status: FlowStatus
    steps: list[FlowStepRecord]
    started_at: str
    finished_at: str | None = None
    wall_s: float | None = Field(None, description="finished_at - started_at, once the flow ended")
    sum_step_s: float = Field(0.0, description="the sum of the steps' run times")
    speedup: float | None = Field(None, description="sum_step_s / wall_s, once the flow ended")


# --- templates ------------------------------------------------------------------------------------

_OPENING = re.compile(r"\{\{\s*steps\.")
_TEMPLATE = re.compile(
    r"\{\{\s*steps\.(?P<step>[A-Za-z0-9_-]+)\.(?P<what>output|result)(?P<path>(?:\.[^.\s{}]+)*)\s*\}\}"
)
_FORMS = "{{steps.ID.output}}, {{steps.ID.result}} or {{steps.ID.result.FIELD}}"


@dataclass(frozen=True)
class TemplateRef:
    """One `{{steps.ID.output|result[.FIELD...]}}` in a step's text."""

    step: str
    what: str
    path: tuple[str, ...]


def parse_templates(text: str, where: str) -> list[TemplateRef]:
    """The templates in `text`; InvalidRequestError for a `{{steps.` that is not one of the allowed forms."""
    refs = []
    for opening in _OPENING.finditer(text):
        match = _TEMPLATE.match(text, opening.start())
        if match is None:
            snippet = text[opening.start() : opening.start() + 60]
            raise InvalidRequestError(f"{where}: malformed template {snippet!r}; use {_FORMS}")
        path = tuple(match["path"].split(".")[1:])
        if match["what"] == "output" and path:
            raise InvalidRequestError(f"{where}: {match[0]!r}: `output` is text and has no fields; use {_FORMS}")
        refs.append(TemplateRef(match["step"], match["what"], path))
    return refs


def _templated_texts(arguments: EffectArguments) -> list[tuple[str, str]]:
    texts = [("prompt", arguments.prompt), ("stdin", arguments.stdin)]
    texts += [(f"command[{i}]", text) for i, text in enumerate(arguments.command or [])]
    texts += [(f"args[{i}]", text) for i, text in enumerate(arguments.args or [])]
    return [(name, text) for name, text in texts if text is not None]


def _spec_texts(spec: EffectSpec) -> list[str]:
    texts = [*spec.args, *(spec.command if spec.kind == "command" else [])]
    return texts + [text for text in (spec.prompt, spec.stdin) if text is not None]


def _result_field(step: str, result: Any, path: Sequence[str]) -> Any:
    value = result
    for depth, name in enumerate(path):
        where = ".".join(path[: depth + 1])
        if isinstance(value, Mapping) and name in value:
            value = value[name]
        elif isinstance(value, list) and name.isdigit() and int(name) < len(value):
            value = value[int(name)]
        else:
            raise ValueError(f"template {{{{steps.{step}.result.{where}}}}}: step {step}'s result has no {where!r}")
    return value


# --- checking a flow ------------------------------------------------------------------------------


def check_graph(steps: Sequence[Step]) -> dict[str, frozenset[str]]:
    """Checks the steps form a DAG; returns each step's ancestors (what it needs, directly or transitively)."""
    if not steps:
        raise InvalidRequestError("a flow needs at least one step: give `steps` as a list of step objects")
    if len(steps) > MAX_STEPS:
        raise InvalidRequestError(f"a flow holds at most {MAX_STEPS} steps, not {len(steps)}")
    by_id: dict[str, Step] = {}
    for step in steps:
        if step.id in by_id:
            raise InvalidRequestError(f"duplicate step id {step.id!r}: every step of a flow needs its own id")
        by_id[step.id] = step
    for step in steps:
        for need in step.needs:
            if need not in by_id:
                raise InvalidRequestError(
                    f"step {step.id!r} needs unknown step {need!r}; the steps of this flow are: {', '.join(by_id)}"
                )
    # Depth-first search; a need met again while still on the path closes a cycle.
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in steps:
        if root.id in state:
            continue
        path = [root.id]
        stack = [iter(dict.fromkeys(root.needs))]
        state[root.id] = 1
        while stack:
            upstream = next(stack[-1], None)
            if upstream is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(upstream) == 1:
                cycle = [*path[path.index(upstream) :], upstream]
                raise InvalidRequestError(
                    f"the steps' needs form a cycle: {' -> '.join(cycle)} (each needs the next); a flow must be acyclic"
                )
            elif upstream not in state:
                state[upstream] = 1
                path.append(upstream)
                stack.append(iter(dict.fromkeys(by_id[upstream].needs)))
    ancestors: dict[str, frozenset[str]] = {}

    def ancestors_of(step_id: str) -> frozenset[str]:
        if step_id not in ancestors:
            found: set[str] = set()
            for need in by_id[step_id].needs:
                found.add(need)
                found |= ancestors_of(need)
            ancestors[step_id] = frozenset(found)
        return ancestors[step_id]

    for step in _topological(steps):
        ancestors_of(step.id)
    return ancestors


def _topological(steps: Sequence[Step]) -> list[Step]:
    """The steps in an order where each comes after every step it needs (the graph is acyclic)."""
    by_id = {step.id: step for step in steps}
    placed: set[str] = set()
    order: list[Step] = []
    for root in steps:
        stack: list[tuple[Step, bool]] = [(root, False)]
        while stack:
            step, expanded = stack.pop()
            if step.id in placed:
                continue
            if expanded:
                placed.add(step.id)
                order.append(step)
                continue
            stack.append((step, True))
            stack.extend((by_id[need], False) for need in reversed(step.needs) if need not in placed)
    return order


def check_templates(steps: Sequence[Step], ancestors: Mapping[str, frozenset[str]]) -> dict[str, bool]:
    """Checks every template names a step its step needs; returns which steps hold templates."""
    templated = {}
    for step in steps:
        refs = []
        for name, text in _templated_texts(step):
            where = f"step {step.id!r} {name}"
            for ref in parse_templates(text, where):
                if ref.step not in ancestors:
                    raise InvalidRequestError(f"{where}: the template names unknown step {ref.step!r}")
                if ref.step not in ancestors[step.id]:
                    raise InvalidRequestError(
                        f"{where}: the template names step {ref.step!r}, which step {step.id!r} does not need "
                        f"(directly or transitively), so it may not have run yet; add {ref.step!r} to its `needs`"
                    )
                refs.append(ref)
        templated[step.id] = bool(refs)
    return templated


# --- live flows -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepRef:
    step_id: str
    effect_id: str
    needs: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"step_id": self.step_id, "effect_id": self.effect_id, "needs": list(self.needs)}


@dataclass(eq=False)
class Flow:
    """One flow's state while it runs (and the handle a foreground caller waits on)."""

    flow_id: str
    run_id: str
    policy: Policy
    max_concurrency: int | None
    started_at: str
    steps: list[StepRef]
    status: FlowStatus = "running"
    finished_at: str | None = None
    effects: dict[str, Effect] = field(default_factory=dict)
    stop_why: str | None = None  # set once fail_fast stopped the flow
    completing: bool = False
    done: anyio.Event = field(default_factory=anyio.Event)
    changed: anyio.Event = field(default_factory=anyio.Event)

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Flow:
        steps = [StepRef(s["step_id"], s["effect_id"], tuple(s["needs"])) for s in json.loads(row["steps"])]
        flow = cls(
            row["flow_id"],
            row["run_id"],
            row["policy"],
            row["max_concurrency"],
            row["started_at"],
            steps,
            row["status"],
        )
        flow.finished_at = row["finished_at"]
        if flow.finished_at is not None:
            flow.done.set()
        return flow

    @property
    def effect_ids(self) -> list[str]:
        return [step.effect_id for step in self.steps]

    def touch(self) -> None:
        """Wakes whoever follows the flow (a step ended, or the flow did)."""
        self.changed.set()
        self.changed = anyio.Event()

    def finished_steps(self) -> int:
        return sum(1 for effect in self.effects.values() if effect.terminal)


def flow_status(effects: Iterable[Effect]) -> FlowStatus:
    """The status of a flow whose steps are all terminal (see the module docstring)."""
    effects = list(effects)
    if all(e.status == "succeeded" for e in effects):
        return "succeeded"
    if any(e.status == "cancelled" and e.cancel_reason in STOPPED_ON_PURPOSE for e in effects):
        return "cancelled"
    return "failed"


def flow_record(flow: Flow, effects: Mapping[str, Effect]) -> FlowRecord:
    """The flow record from the flow and the current state of its steps' effects."""
    steps = []
    for ref in flow.steps:
        record = effects[ref.effect_id].record()
        steps.append(
            FlowStepRecord(
                step_id=ref.step_id,
                effect_id=ref.effect_id,
                needs=list(ref.needs),
                status=record.status,
                label=record.label,
                started_at=record.started_at,
                finished_at=record.finished_at,
                duration_s=record.duration_s,
                exit_code=record.exit_code,
                cancel_reason=record.cancel_reason,
                error=record.error,
            )
        )
    sum_step_s = round(sum(s.duration_s or 0.0 for s in steps), 6)
    wall_s = seconds_between(flow.started_at, flow.finished_at)
    return FlowRecord(
        flow_id=flow.flow_id,
        run_id=flow.run_id,
        policy=flow.policy,
        max_concurrency=flow.max_concurrency,
        status=flow.status,
        steps=steps,
        started_at=flow.started_at,
        finished_at=flow.finished_at,
        wall_s=wall_s,
        sum_step_s=sum_step_s,
        speedup=round(sum_step_s / wall_s, 3) if wall_s else None,
    )


class FlowManager:
    """Validates and submits flows, fills step templates, applies policies and completes flows."""

    def __init__(self, settings: Settings, journal: Journal, supervisor: Supervisor) -> None:
        self.settings = settings
        self.journal = journal
        self.supervisor = supervisor
        self.closing = False  # set when the engine stops: a server stop is not a flow failure
        self._active: dict[str, Flow] = {}
        self._submit_lock = anyio.Lock()
        self._tg: TaskGroup | None = None
        supervisor.render = self.render
        supervisor.on_terminal.append(self._on_terminal)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FlowManager]:
        """Runs the manager's own tasks (settling flows as steps end) until the context ends."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                yield self
            finally:
                self._tg = None
                tg.cancel_scope.cancel()

    # --- submitting -------------------------------------------------------------------------------

    async def submit(
        self,
        steps: Sequence[Step],
        *,
        policy: Policy = "fail_fast",
        max_concurrency: int | None = None,
        flow_id: str | None = None,
        run_id: str | None = None,
    ) -> tuple[Flow, bool]:
        """Checks a flow and journals it with all its steps in one commit; returns it and whether it is new.

        A `flow_id` that already names a flow with the same arguments returns that flow (False); with
        other arguments it is a ConflictError. Any error is raised before anything is written.
        """
        if self.closing:
            raise InvalidRequestError("the server is shutting down and takes no new flows")
        if max_concurrency is not None and max_concurrency < 1:
            raise InvalidRequestError(f"max_concurrency must be at least 1 (or null for no cap), not {max_concurrency}")
        ancestors = check_graph(steps)
        the_flow_id = flow_id or new_id("flw_")
        the_run_id = run_id or self.supervisor.default_run_id
        effect_ids = {step.id: new_id("eff_") for step in steps}
        specs = []
        for step in steps:
            request = step.effect_fields() | {
                "group": the_flow_id,
                "flow_id": the_flow_id,
                "step_id": step.id,
                "depends_on": [effect_ids[need] for need in dict.fromkeys(step.needs)],
            }
            try:
                specs.append(build_spec(self.settings, request))
            except InvalidRequestError as exc:
                raise type(exc)(f"step {step.id!r}: {exc}") from None
        templated = check_templates(steps, ancestors)
        specs = [spec.model_copy(update={"templated": templated[s.id]}) for s, spec in zip(steps, specs, strict=True)]
        keys: dict[str, str] = {}
        for step in steps:
            if step.key is not None and step.key in keys:
                raise InvalidRequestError(f"steps {keys[step.key]!r} and {step.id!r} both use key {step.key!r}")
            if step.key is not None:
                keys[step.key] = step.id
        refs = [StepRef(step.id, effect_ids[step.id], tuple(dict.fromkeys(step.needs))) for step in steps]
        async with self._submit_lock:
            existing = await self.journal.flow(the_flow_id)
            if existing is not None:
                flow = await self._same_flow(existing, refs, specs, policy, max_concurrency, run_id)
                return flow, False
            if await self.journal.group_ids(the_flow_id):
                raise InvalidRequestError(
                    f"flow id {the_flow_id!r} already names a group of effects; give the flow a new `flow_id`"
                )
            started_at = now_iso()
            flow = Flow(the_flow_id, the_run_id, policy, max_concurrency, started_at, refs)
            requested = Event(
                "FLOW_REQUESTED",
                the_run_id,
                None,
                {
                    "flow_id": the_flow_id,
                    "policy": policy,
                    "max_concurrency": max_concurrency,
                    "started_at": started_at,
                    "steps": [ref.to_json() for ref in refs],
                },
            )
            if max_concurrency is not None:
                self.supervisor.limit_group(the_flow_id, max_concurrency)
            self._active[the_flow_id] = flow
            try:
                effects = await self.supervisor.dispatch_many(
                    [(ref.effect_id, spec) for ref, spec in zip(refs, specs, strict=True)], the_run_id, [requested]
                )
            except BaseException:
                self._active.pop(the_flow_id, None)
                raise
            for effect in effects:
                flow.effects.setdefault(effect.effect_id, effect)
        return flow, True

    async def _same_flow(
        self,
        row: Mapping[str, Any],
        refs: Sequence[StepRef],
        specs: Sequence[EffectSpec],
        policy: str,
        max_concurrency: int | None,
        run_id: str | None,
    ) -> Flow:
        flow = self._active.get(row["flow_id"]) or Flow.from_row(row)
        old = await self.supervisor.get_many(flow.effect_ids)
        same = (
            row["policy"] == policy
            and row["max_concurrency"] == max_concurrency
            and (run_id is None or run_id == row["run_id"])
            and [(s.step_id, s.needs) for s in flow.steps] == [(s.step_id, s.needs) for s in refs]
            and all(
                a.spec.model_dump(exclude={"depends_on"}) == b.model_dump(exclude={"depends_on"})
                for a, b in zip(old, specs, strict=True)
            )
        )
        if not same:
            raise ConflictError(
                f"flow id {row['flow_id']!r} already names a flow with other steps or settings; use a new "
                "`flow_id`, or the same arguments to get that flow back"
            )
        for effect in old:
            flow.effects.setdefault(effect.effect_id, effect)
        return flow

    # --- following --------------------------------------------------------------------------------

    async def get(self, flow_id: str) -> Flow:
        """The flow with this id (live, or as the journal has it); UnknownEffectError names an unknown id."""
        flow = self._active.get(flow_id)
        if flow is None:
            row = await self.journal.flow(flow_id)
            if row is None:
                raise UnknownEffectError(f"unknown flow id {flow_id!r}: no flow with this id in the journal")
            flow = self._active.get(flow_id) or Flow.from_row(row)
        return flow

    async def record(self, flow: Flow) -> FlowRecord:
        """The flow's current record."""
        missing = [i for i in flow.effect_ids if i not in flow.effects]
        effects = dict(flow.effects)
        if missing:
            effects.update((e.effect_id, e) for e in await self.supervisor.get_many(missing))
        return flow_record(flow, effects)

    async def wait(self, flow: Flow, within_s: float | None = None) -> bool:
        """Waits until the flow has ended (at most `within_s`); True when it has."""
        with anyio.move_on_after(within_s if within_s is not None else float("inf")):
            await flow.done.wait()
        return flow.done.is_set()

    def cancel(self, flow: Flow, reason: str = "user", message: str | None = None) -> list[Effect]:
        """Asks every unfinished step of the flow to stop (pending and queued ones at once); returns them."""
        targets = [e for e in flow.effects.values() if not e.terminal]
        for effect in targets:
            self.supervisor.request_cancel(effect, reason, message)
        return targets

    # --- templates --------------------------------------------------------------------------------

    async def render(self, effect: Effect) -> tuple[list[str], str | None]:
        """The argv and stdin of a templated step, with its templates filled from the steps it needs."""
        spec = effect.spec
        if spec.flow_id is None:
            return list(spec.command), spec.stdin
        refs = [ref for text in _spec_texts(spec) for ref in parse_templates(text, f"step {spec.step_id!r}")]
        if not refs:
            return list(spec.command), spec.stdin
        flow = await self.get(spec.flow_id)
        effect_of = {ref.step_id: ref.effect_id for ref in flow.steps}
        sources: dict[str, Effect] = {}
        for step_id in dict.fromkeys(ref.step for ref in refs):
            source = await self.supervisor.get(effect_of[step_id])
            if source.status != "succeeded":
                raise ValueError(f"template names step {step_id}, which is {source.status}, not succeeded")
            sources[step_id] = source
        outputs: dict[str, str] = {}

        def value(match: re.Match[str]) -> str:
            step_id, what = match["step"], match["what"]
            source = sources[step_id]
            if what == "output":
                if step_id not in outputs:
                    outputs[step_id] = source.output.read(0, source.output.size)[0].rstrip()
                return outputs[step_id]
            path = match["path"].split(".")[1:]
            picked = _result_field(step_id, source.result, path) if path else source.result
            return picked if isinstance(picked, str) and path else json.dumps(picked, ensure_ascii=False)

        def fill(text: str) -> str:
            return _TEMPLATE.sub(value, text)

        stdin = fill(spec.stdin) if spec.stdin is not None else None
        if spec.kind == "harness":
            profile = self.settings.harnesses.get(spec.harness or "")
            if profile is None:
                raise ValueError(f"harness profile {spec.harness!r} is no longer configured")
            prompt = fill(spec.prompt or "")
            argv = profile.build_argv(prompt, [fill(arg) for arg in spec.args])
            if stdin is None and spec.prompt_via == "stdin":
                stdin = prompt
        else:
            argv = [fill(arg) for arg in spec.command]
        check_argv(argv, "the command line after filling its templates")
        return argv, stdin

    # --- steps ending -----------------------------------------------------------------------------

    def _on_terminal(self, effect: Effect) -> None:
        flow = self._active.get(effect.spec.flow_id or "")
        if flow is None:
            return
        try:
            flow.effects.setdefault(effect.effect_id, effect)
            self._enforce(flow, effect)
            flow.touch()
            if self._tg is not None:  # stopped: the next start completes the flow
                self._tg.start_soon(self._settle, flow)
        except Exception:  # a hook must never break the supervisor's bookkeeping
            log.exception("flow %s: handling the end of step %s failed", flow.flow_id, effect.spec.step_id)

    def _enforce(self, flow: Flow, ended: Effect | None = None) -> None:
        """fail_fast: once a step ended without success, skips the steps not started and cancels the running."""
        if flow.policy != "fail_fast" or self.closing or flow.completing:
            return
        if flow.stop_why is None:
            culprit = ended if ended is not None and ended.status != "succeeded" else None
            if culprit is None:
                ended_badly = [e for e in flow.effects.values() if e.terminal and e.status != "succeeded"]
                culprit = min(ended_badly, key=lambda e: e.terminal_seq or 0, default=None)
            if culprit is None:
                return
            flow.stop_why = f"flow {flow.flow_id} stopped (fail_fast): step {culprit.spec.step_id} {culprit.status}"
        for other in flow.effects.values():
            if not other.terminal:
                self.supervisor.request_skip(other, flow.stop_why, "fail_fast")

    async def _settle(self, flow: Flow) -> None:
        """Applies the policy to steps not seen yet and completes the flow once every step is terminal."""
        try:
            missing = [i for i in flow.effect_ids if i not in flow.effects]
            if missing:
                for effect in await self.supervisor.get_many(missing):
                    flow.effects.setdefault(effect.effect_id, effect)
            self._enforce(flow)
            await self._complete_if_done(flow)
        except Exception:
            log.exception("flow %s: settling failed", flow.flow_id)

    async def _complete_if_done(self, flow: Flow) -> None:
        if flow.completing or flow.done.is_set() or len(flow.effects) < len(flow.steps):
            return
        effects = [flow.effects[i] for i in flow.effect_ids]
        if not all(e.terminal for e in effects):
            return
        flow.completing = True
        status = flow_status(effects)
        finished_at = max([flow.started_at, *(e.finished_at for e in effects if e.finished_at)])
        event = Event(
            "FLOW_COMPLETED", flow.run_id, None, {"flow_id": flow.flow_id, "status": status, "finished_at": finished_at}
        )
        with anyio.CancelScope(shield=True):
            try:
                await self.journal.append(event)
            except BaseException:
                flow.completing = False
                raise
        flow.status, flow.finished_at = status, finished_at
        self._active.pop(flow.flow_id, None)
        flow.done.set()
        flow.touch()

    # --- restart ----------------------------------------------------------------------------------

    async def load(self) -> None:
        """Registers the flows the journal has unfinished; runs before the supervisor recovers its effects.

        A fail_fast flow that a stop or crash left with a step ended without success (or running,
        which recovery fails as `interrupted`) gets its waiting steps skipped here, so none starts.
        """
        for row in await self.journal.active_flows():
            flow = Flow.from_row(row)
            self._active[flow.flow_id] = flow
            if flow.max_concurrency is not None:
                self.supervisor.limit_group(flow.flow_id, flow.max_concurrency)
            if flow.policy == "fail_fast":
                await self._skip_before_recovery(flow)

    async def _skip_before_recovery(self, flow: Flow) -> None:
        rows = await self.journal.list_effects(None, flow.flow_id, None, len(flow.steps) + 1)
        culprit = next((r for r in rows if r["status"] in ("failed", "cancelled", "skipped", "running")), None)
        if culprit is None:
            return
        status = "interrupted" if culprit["status"] == "running" else culprit["status"]
        why = f"flow {flow.flow_id} stopped (fail_fast): step {culprit['step_id']} {status}"
        flow.stop_why = why
        events = [
            Event("EFFECT_SKIPPED", row["run_id"], row["effect_id"], {"finished_at": now_iso(), "error": why})
            for row in rows
            if row["status"] in ("pending", "queued")
        ]
        if events:
            await self.journal.append(*events)

    async def recover(self) -> None:
        """Settles every flow registered by `load` (the supervisor is running): completes those that ended."""
        for flow in list(self._active.values()):
            await self._settle(flow)
