"""The data of flows: the step a caller submits, the records reported, and the status rule.

Flow status, decided once every step is terminal (`flow_status`):

- `succeeded`: every step succeeded.
- `cancelled`: some step was stopped on purpose: cancelled with reason `user`, `client_cancelled`
  or `shutdown` (cancel_effect, cancel_group on the flow id, an abandoned foreground call, a server
  stop). This wins over `failed`: a flow someone stopped is reported as stopped.
- `failed`: otherwise: some step failed, timed out (`timeout`, `idle_timeout`) or was skipped
  because a step it needs did not succeed; `fail_fast` cancellations are consequences, not causes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Annotated, Any, ClassVar, Literal, Protocol

import anyio
from pydantic import BaseModel, ConfigDict, Field

from effectd.model.arguments import EffectArguments, Limits
from effectd.model.records import CancelReason, Status, seconds_between
from effectd.supervisor.effect import Effect

Policy = Literal["fail_fast", "continue"]
FlowStatus = Literal["running", "succeeded", "failed", "cancelled"]

MAX_STEPS = 1000
STOPPED_ON_PURPOSE: frozenset[str] = frozenset({"user", "client_cancelled", "shutdown"})
"""Cancel reasons that make a flow `cancelled` rather than `failed`."""

_STEP_ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_-]*$"
StepId = Annotated[
    str, Field(min_length=1, max_length=64, pattern=_STEP_ID_PATTERN, description="letters, digits, _ and -")
]


class PipeNeed(BaseModel):
    """A need whose output is piped into this step's stdin: the step starts when that step starts."""

    model_config = ConfigDict(extra="forbid")

    step: StepId
    pipe: Annotated[Literal[True], Field(description="true: feed that step's output to this step's stdin")]


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
        list[StepId | PipeNeed],
        Field(
            max_length=MAX_STEPS,
            description='ids of the steps that must succeed first; at most one {"step": ID, "pipe": true}: '
            "this step starts when that one starts, its output fed to this step's stdin",
        ),
    ] = []
    approval: Annotated[
        bool,
        Field(
            description="true: the step waits, before it starts, until its start is allowed (an approval with tool "
            '"start"; answer_approval); denied, it is skipped with the message'
        ),
    ] = False
    for_each: Annotated[
        list[Any] | str | None,
        Field(
            description="fan out: a JSON list, or a template rendering to one (e.g. {{steps.plan.result.files}}), "
            "at most 1,000 items; one effect per item, with {{item}}, {{item.FIELD}} and {{index}} filled"
        ),
    ] = None

    @property
    def need_ids(self) -> list[str]:
        """The ids of the steps it needs, piped or not."""
        return [need.step if isinstance(need, PipeNeed) else need for need in self.needs]

    @property
    def pipes(self) -> list[str]:
        """The ids of the steps piped into it."""
        return [need.step for need in self.needs if isinstance(need, PipeNeed)]


@dataclass(frozen=True, kw_only=True)
class FlowRequest:
    """One flow and where it goes: what `Engine.dispatch_flow` and `FlowManager.submit` take, built
    by each front-end from its own arguments (dispatch_flow's, the Python API's)."""

    steps: Sequence[Step]
    policy: Policy = "fail_fast"
    max_concurrency: int | None = None  # at most this many steps running at once; None: no cap
    flow_id: str | None = None  # default: a new id prefixed flw_
    run_id: str | None = None  # default: the server's run
    budget: Limits | None = None  # the budget of the flow's group
    resume: str | None = None  # an earlier flow whose unchanged succeeded steps are taken (flows.resume)

    @classmethod
    def of(cls, arguments: Mapping[str, Any]) -> FlowRequest:
        """The request among a `dispatch_flow` call's validated arguments (how the caller waits left out)."""
        return cls(**{f.name: arguments[f.name] for f in fields(cls) if f.name in arguments})


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
    cached: bool = Field(False, description="resume: taken from the resumed flow without running")
    reused_from: str | None = Field(None, description="resume: the effect whose outcome a cached step carries")
    index: int | None = Field(None, description="fan-out: a child's item index")
    children: list[FlowStepRecord] = Field(default_factory=list, description="fan-out: one effect per item")


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
    owner: str = Field("", description="the id of the server that dispatched the flow")
    resumed_from: str | None = Field(None, description="the flow this one resumed (dispatch_flow's `resume`)")
    cached_steps: int = Field(0, description="resume: steps taken from the resumed flow without running")


@dataclass(frozen=True)
class StepRef:
    """A step as the journal keeps it in FLOW_REQUESTED: its id, its effect and the step ids it needs."""

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
    owner: str | None = None
    effects: dict[str, Effect] = field(default_factory=dict)
    stop_why: str | None = None  # set once fail_fast stopped the flow
    resumed_from: str | None = None  # the flow whose steps this one may take (flows.resume)
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
        flow.finished_at, flow.resumed_from = row["finished_at"], row.get("resumed_from")
        flow.owner = row.get("owner")
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
        return sum(1 for i in self.effect_ids if i in self.effects and self.effects[i].terminal)  # not fan-out children


class Flows(Protocol):
    """What fan-out and resume read of the flows they run in (the `FlowManager` is one)."""

    async def get(self, flow_id: str) -> Flow: ...

    async def render(self, effect: Effect) -> tuple[list[str], str | None]: ...


def flow_status(effects: Iterable[Effect]) -> FlowStatus:
    """The status of a flow whose steps are all terminal (see the module docstring)."""
    effects = list(effects)
    if all(e.status == "succeeded" for e in effects):
        return "succeeded"
    if any(e.status == "cancelled" and e.cancel_reason in STOPPED_ON_PURPOSE for e in effects):
        return "cancelled"
    return "failed"


def flow_record(
    flow: Flow, effects: Mapping[str, Effect], children: Mapping[str, Sequence[Effect]] | None = None
) -> FlowRecord:
    """The flow record from the flow and the current state of its steps' effects (and their fan-out
    `children`, by step id, in item order)."""
    steps = [
        _step_record(ref.step_id, effects[ref.effect_id], list(ref.needs), (children or {}).get(ref.step_id, ()))
        for ref in flow.steps
    ]
    sum_step_s = round(sum(one.duration_s or 0.0 for step in steps for one in (step, *step.children)), 6)
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
        owner=flow.owner or "",
        resumed_from=flow.resumed_from,
        cached_steps=sum(1 for s in steps if s.cached),
    )


def _step_record(step_id: str, effect: Effect, needs: list[str], children: Sequence[Effect]) -> FlowStepRecord:
    record = effect.record()
    return FlowStepRecord(
        step_id=step_id,
        effect_id=record.effect_id,
        needs=needs,
        status=record.status,
        label=record.label,
        started_at=record.started_at,
        finished_at=record.finished_at,
        duration_s=record.duration_s,
        exit_code=record.exit_code,
        cancel_reason=record.cancel_reason,
        error=record.error,
        cached=record.cached,
        reused_from=record.reused_from,
        index=effect.spec.item_index,
        children=[_step_record(step_id, child, [], ()) for child in children],
    )
