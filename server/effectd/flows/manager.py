"""The flow manager: runs flows on the supervisor.

The supervisor does the scheduling (a step's `depends_on` are the effects of its `needs`, all in the
group named by the flow id). The manager checks a flow before anything is written, fills a step's
templates when it starts, applies the flow's policy as steps end, journals FLOW_REQUESTED and
exactly one FLOW_COMPLETED per flow, picks unfinished flows up again after a restart, and reports
the flow record.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio.abc import TaskGroup

from effectd.config.settings import Settings
from effectd.engine.budgets import Budgets
from effectd.errors import ConflictError, InvalidRequestError, UnknownEffectError
from effectd.flows.fanout import FanOut
from effectd.flows.models import Flow, FlowRecord, FlowRequest, StepRef, flow_record, flow_status
from effectd.flows.plan import plan_steps
from effectd.flows.resume import check_resume
from effectd.flows.templates import fill_step, parse_templates, spec_texts
from effectd.journal.projection import Event
from effectd.journal.store import Journal
from effectd.model.records import CancelReason, EffectSpec, new_id, now_iso
from effectd.supervisor.attempt import check_limits, check_sandbox
from effectd.supervisor.core import Supervisor
from effectd.supervisor.effect import Effect
from effectd.supervisor.workspaces import check as check_isolation

log = logging.getLogger("effectd")
_EFFECT_IDS = {"depends_on", "pipe_from"}  # spec fields naming other effects: new ids each time a flow is planned


class FlowManager:
    """Validates and submits flows, fills step templates, applies policies and completes flows."""

    def __init__(self, settings: Settings, journal: Journal, supervisor: Supervisor, *, budgets: Budgets) -> None:
        self.settings = settings
        self.budgets = budgets  # a flow's `budget` is its group's
        self.journal = journal
        self.supervisor = supervisor
        self.fan_out = FanOut(  # the supervisor asks it first whether a flow step runs a process at all
            flows=self,
            registry=supervisor.registry,
            journal=journal,
            harnesses=settings.harnesses,
            dispatch_many=supervisor.dispatch_many,
            closing=lambda: supervisor.closing,
        )
        self.closing = False  # set when the engine stops: a server stop is not a flow failure
        self._active: dict[str, Flow] = {}
        self._submit_lock = anyio.Lock()
        self._tg: TaskGroup | None = None

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

    async def submit(self, request: FlowRequest) -> tuple[Flow, bool]:
        """Checks a flow and journals it with all its steps in one commit; returns it and whether it is new.

        A `flow_id` that already names a flow with the same arguments returns that flow (False); with
        other arguments it is a ConflictError. Any error is raised before anything is written.
        """
        if self.closing:
            raise InvalidRequestError("the server is shutting down and takes no new flows")
        policy, max_concurrency, run_id, resume = (
            request.policy,
            request.max_concurrency,
            request.run_id,
            request.resume,
        )
        if max_concurrency is not None and max_concurrency < 1:
            raise InvalidRequestError(f"max_concurrency must be at least 1 (or null for no cap), not {max_concurrency}")
        the_flow_id = request.flow_id or new_id("flw_")
        refs, specs = plan_steps(self.settings, request.steps, the_flow_id)
        for spec in specs:
            try:
                await check_isolation(spec)
                await check_sandbox(self.supervisor.attempts.runner, spec)
                check_limits(self.supervisor.attempts.runner, spec)
            except InvalidRequestError as exc:
                raise InvalidRequestError(f"step {spec.step_id!r}: {exc}") from None
        if resume is not None:
            await check_resume(self.journal, resume, the_flow_id)
        the_run_id = run_id or self.supervisor.default_run_id
        async with self._submit_lock:
            existing = await self.journal.flow(the_flow_id)
            if existing is not None:
                flow = await _same_flow(
                    self.supervisor, self._active, existing, refs, specs, policy, max_concurrency, run_id
                )
                return flow, False
            if await self.journal.group_ids(the_flow_id):
                raise InvalidRequestError(
                    f"flow id {the_flow_id!r} already names a group of effects; give the flow a new `flow_id`"
                )
            budgeted = self.budgets.for_flow(the_flow_id, the_run_id, request.budget)  # refused when a budget is spent
            started_at = now_iso()
            flow = Flow(
                the_flow_id,
                the_run_id,
                policy,
                max_concurrency,
                started_at,
                refs,
                owner=self.supervisor.server_id,
                resumed_from=resume,
            )
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
                    "owner": self.supervisor.server_id,
                    "resumed_from": resume,
                },
            )
            if max_concurrency is not None:
                self.supervisor.limit_group(the_flow_id, max_concurrency)
            self._active[the_flow_id] = flow
            try:
                effects = await self.supervisor.dispatch_many(
                    [(ref.effect_id, spec) for ref, spec in zip(refs, specs, strict=True)],
                    the_run_id,
                    [requested, *budgeted],  # the flow's budget, if it has one, in the same commit
                )
            except BaseException:
                self._active.pop(the_flow_id, None)
                raise
            for effect in effects:
                flow.effects.setdefault(effect.effect_id, effect)
            await self.budgets.adopt_all(budgeted)
        return flow, True

    # --- following --------------------------------------------------------------------------------

    def runs(self, flow_id: str) -> bool:
        """Whether this server runs the flow now (its own, not yet ended)."""
        return flow_id in self._active

    def of_row(self, row: Mapping[str, Any]) -> Flow:
        """The flow a journal row names: the live one while it runs (it may be a step ahead of the row)."""
        return self._active.get(row["flow_id"]) or Flow.from_row(row)

    async def get(self, flow_id: str) -> Flow:
        """The flow with this id (live, or as the journal has it); UnknownEffectError names an unknown id."""
        flow = self._active.get(flow_id)
        if flow is None:
            row = await self.journal.flow(flow_id)
            if row is None:
                raise UnknownEffectError(f"unknown flow id {flow_id!r}: no flow with this id in the journal")
            flow = self.of_row(row)
        return flow

    async def record(self, flow: Flow) -> FlowRecord:
        """The flow's current record."""
        missing = [i for i in flow.effect_ids if i not in flow.effects]
        effects = dict(flow.effects)
        if missing:
            effects.update((e.effect_id, e) for e in await self.supervisor.get_many(missing))
        return flow_record(flow, effects, await self.fan_out.fanned_out(flow, effects))

    async def wait(self, flow: Flow, within_s: float | None = None) -> bool:
        """Waits until the flow has ended (at most `within_s`); True when it has."""
        with anyio.move_on_after(within_s if within_s is not None else float("inf")):
            await flow.done.wait()
        return flow.done.is_set()

    def cancel(self, flow: Flow, reason: CancelReason = "user", message: str | None = None) -> list[Effect]:
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
        refs = [ref for text in spec_texts(spec) for ref in parse_templates(text, f"step {spec.step_id!r}")]
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
        outputs = {
            step_id: sources[step_id].output.read(0, sources[step_id].output.size)[0].rstrip()
            for step_id in dict.fromkeys(ref.step for ref in refs if ref.what == "output")
        }
        results = {step_id: source.result for step_id, source in sources.items()}
        workspaces = {step_id: source.state.workspace for step_id, source in sources.items()}
        return fill_step(spec, self.settings.harnesses, outputs, results, workspaces)

    # --- steps ending -----------------------------------------------------------------------------

    def step_ended(self, effect: Effect) -> None:
        """Told by the supervisor of every effect's end: applies the flow's policy at once, and settles
        the flow in the manager's own task."""
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
        if flow.completing or flow.done.is_set() or any(i not in flow.effects for i in flow.effect_ids):
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

    async def load(self, owners: Collection[str] | None = None) -> None:
        """Registers the flows the journal has unfinished (of `owners`, else of the servers the
        supervisor recovers). The supervisor runs this after its recovery (interrupted steps are ended,
        waiting ones loaded) and before any waiting step starts.

        A fail_fast flow that a stop or crash left with a step ended without success has its waiting
        steps skipped through the supervisor, so none starts.
        """
        owners = owners if owners is not None else self.supervisor.owners
        for row in await self.journal.active_flows():
            if owners is not None and (row.get("owner") or "") not in owners:
                continue  # a live server's flow: it completes it
            flow = Flow.from_row(row)
            self._active[flow.flow_id] = flow
            if flow.max_concurrency is not None:
                self.supervisor.limit_group(flow.flow_id, flow.max_concurrency)
            if flow.policy == "fail_fast":
                await self._stop_if_failed(flow)

    async def _stop_if_failed(self, flow: Flow) -> None:
        steps = await self.supervisor.get_many(flow.effect_ids)
        culprit = min(
            (e for e in steps if e.terminal and e.status != "succeeded"),
            key=lambda e: e.terminal_seq or 0,
            default=None,
        )
        if culprit is None:
            return
        how = "interrupted" if culprit.state.error == "interrupted" else culprit.status
        flow.stop_why = f"flow {flow.flow_id} stopped (fail_fast): step {culprit.spec.step_id} {how}"
        for effect in steps:
            if not effect.terminal:
                self.supervisor.request_skip(effect, flow.stop_why, "fail_fast")

    async def recover(self) -> None:
        """Settles every flow registered by `load` (the supervisor is running): completes those that ended."""
        for flow in list(self._active.values()):
            await self._settle(flow)


async def _same_flow(
    supervisor: Supervisor,
    active: Mapping[str, Flow],
    row: Mapping[str, Any],
    refs: Sequence[StepRef],
    specs: Sequence[EffectSpec],
    policy: str,
    max_concurrency: int | None,
    run_id: str | None,
) -> Flow:
    """The flow `row` names, when it was submitted with these same arguments; else a ConflictError."""
    flow = active.get(row["flow_id"]) or Flow.from_row(row)
    old = await supervisor.get_many(flow.effect_ids)
    same = (
        row["policy"] == policy
        and row["max_concurrency"] == max_concurrency
        and (run_id is None or run_id == row["run_id"])
        and [(s.step_id, s.needs) for s in flow.steps] == [(s.step_id, s.needs) for s in refs]
        and all(
            a.spec.model_dump(exclude=_EFFECT_IDS) == b.model_dump(exclude=_EFFECT_IDS)
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
