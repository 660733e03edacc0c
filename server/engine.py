"""The engine: the one API that every front-end calls.

The MCP tools, the MCP resources, the Python API (`effectd.api`), the HTTP dashboard and the
command line all drive effectd through an `Engine`. They translate: arguments in, records out. None
of them holds SQL, observer wiring or cancel logic of its own; what they share is written here once:
dispatch (one effect, or a flow), following an effect in the foreground (progress, and the cancel
when the caller abandons), group waits, output reads, cancels, queries, and the change feed.

`Engine.open` owns the journal for as long as it runs, recovers what the last server left, and runs
its components, each in its own task group: the supervisor (every running effect), the flow manager,
and the control channel (`effectd cancel`). Closing stops the effects (reason `shutdown`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from effectd.arguments import EffectRequest
from effectd.budgets import BudgetRecord, Budgets, Limits, scope_of
from effectd.config import Settings
from effectd.control import ControlChannel
from effectd.errors import InvalidRequestError, UnknownEffectError
from effectd.feed import ChangeFeed, Changes
from effectd.flows import FlowManager, FlowRecord, Policy, Step
from effectd.follow import ProgressSink, follow_effect, follow_flow
from effectd.journal import Journal
from effectd.models import (
    CANCEL_WAIT_S,
    CancelledGroup,
    EffectList,
    EffectRecord,
    GroupWait,
    OutputChunk,
)
from effectd.ownership import owning
from effectd.runner import Runner
from effectd.runner.choose import open_runner
from effectd.specs import build_spec
from effectd.summary import summarize
from effectd.supervisor import Effect, Supervisor
from effectd.supervisor.completions import AwaitMode, check_await_arguments, wait_group
from effectd.supervisor.recovery import cancel_waiting

ABANDONED = "the client abandoned the call"


@dataclass(frozen=True)
class Dispatched:
    """A dispatch's answer: the effect's record, and whether this call created it (False: same key)."""

    record: EffectRecord
    new: bool


@dataclass(frozen=True)
class FlowDispatched:
    record: FlowRecord
    new: bool


class Engine:
    """The effect engine behind every front-end. Open it with `Engine.open(settings)`."""

    def __init__(self, settings: Settings, journal: Journal, supervisor: Supervisor, flows: FlowManager) -> None:
        self.settings = settings
        self._budgets = flows.budgets  # one keeper: a flow's `budget` is its group's
        self._journal = journal
        self._supervisor = supervisor
        self._flows = flows
        self._feed = supervisor.feed

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings, *, runner: Runner | None = None) -> AsyncIterator[Engine]:
        """Owns the database, recovers it, runs effects; on exit stops them (reason `shutdown`)."""
        async with owning(settings.db), Journal.open(settings.db) as journal, open_runner(settings, runner) as active:
            supervisor = _supervisor(settings, journal, active)
            flows = FlowManager(settings, journal, supervisor, budgets=Budgets(journal, supervisor))
            budgets, loading = _attach(supervisor, flows, flows.budgets)
            engine = cls(settings, journal, supervisor, flows)
            control = ControlChannel(journal, engine._cancel_from_elsewhere, settings.poll_control_s)
            async with budgets.running(), supervisor.running(loading), flows.running(), anyio.create_task_group() as tg:
                await flows.recover()
                tg.start_soon(control.run)
                try:
                    yield engine
                finally:
                    flows.closing = True
                    tg.cancel_scope.cancel()

    # --- facts ------------------------------------------------------------------------------------

    @property
    def default_run_id(self) -> str:
        """The run a dispatch goes to when it names none (one per engine start)."""
        return self._supervisor.default_run_id

    @property
    def closing(self) -> bool:
        return self._supervisor.closing

    def info(self) -> dict[str, Any]:
        return {
            "db": str(self.settings.db),
            "default_run_id": self.default_run_id,
            "max_concurrency": self.settings.max_concurrency,
        }

    def stats(self) -> dict[str, int]:
        """Counters for operators, tests and benchmarks: the journal's transactions so far (group commit
        makes them far fewer than events), and the effects of this engine not yet terminal."""
        return {
            "journal_transactions": self._journal.batches,
            "journal_commits_in_flight": self._journal.in_flight,
            "active_effects": len(self._supervisor.live_effects()),
        }

    def harnesses(self) -> list[dict[str, Any]]:
        profiles = self.settings.harnesses
        return [profiles[name].to_json() for name in sorted(profiles)]

    # --- dispatching ------------------------------------------------------------------------------

    async def dispatch(self, request: EffectRequest) -> Dispatched:
        """Checks and journals one effect and schedules it. Raises InvalidRequestError (and its kin)
        before anything is written when the request cannot work."""
        fields = request.effect_fields() | {
            "group": request.group,
            "depends_on": request.depends_on,
            "group_max_concurrency": request.group_max_concurrency,
        }
        spec = build_spec(self.settings, fields)
        self._budgets.check(request.run_id or self.default_run_id, spec.group)
        effect, new = await self._supervisor.dispatch(spec, request.run_id)
        return Dispatched(effect.record(), new)

    async def dispatch_flow(
        self,
        steps: Sequence[Step],
        *,
        policy: Policy = "fail_fast",
        max_concurrency: int | None = None,
        flow_id: str | None = None,
        run_id: str | None = None,
        budget: Limits | None = None,
    ) -> FlowDispatched:
        """Checks a flow and journals it with all its steps (and its `budget`) in one commit; a `flow_id`
        that names a flow with the same arguments gives that flow back (`new` False)."""
        flow, new = await self._flows.submit(
            steps, policy=policy, max_concurrency=max_concurrency, flow_id=flow_id, run_id=run_id, budget=budget
        )
        return FlowDispatched(await self._flows.record(flow), new)

    # --- following --------------------------------------------------------------------------------

    async def follow(
        self,
        effect_id: str,
        wait_s: float | None,
        *,
        progress: ProgressSink | None = None,
        cancel_on_abandon: bool = False,
    ) -> EffectRecord:
        """Waits up to `wait_s` (None: no bound) for the effect to end, reporting its latest output line
        (or the harness's latest text) to `progress`, at most ten times a second; returns its record.

        With `cancel_on_abandon`, a caller that is cancelled while it waits cancels the effect
        (reason `client_cancelled`): a foreground call the client gave up on.
        """
        effect = await self._supervisor.get(effect_id)
        abandon = None
        if cancel_on_abandon:
            abandon = partial(self._supervisor.request_cancel, effect, "client_cancelled", ABANDONED)
        await follow_effect(effect, wait_s, progress, abandon)
        return effect.record()

    async def follow_flow(
        self,
        flow_id: str,
        wait_s: float | None,
        *,
        progress: ProgressSink | None = None,
        cancel_on_abandon: bool = False,
    ) -> FlowRecord:
        """Waits up to `wait_s` (None: no bound) for the flow to end, reporting each step's end to
        `progress`; with `cancel_on_abandon`, a cancelled caller cancels the flow (`client_cancelled`)."""
        flow = await self._flows.get(flow_id)
        abandon = partial(self._flows.cancel, flow, "client_cancelled", ABANDONED) if cancel_on_abandon else None
        await follow_flow(flow, wait_s, progress, abandon)
        return await self._flows.record(flow)

    # --- queries ----------------------------------------------------------------------------------

    async def poll(self, effect_id: str) -> EffectRecord:
        """The effect's current record; UnknownEffectError names an unknown id."""
        return (await self._supervisor.get(effect_id)).record()

    async def poll_flow(self, flow_id: str, wait_s: float = 0.0) -> FlowRecord:
        """The flow's current record, after waiting up to `wait_s` for it to end."""
        flow = await self._flows.get(flow_id)
        if wait_s > 0:
            await self._flows.wait(flow, wait_s)
        return await self._flows.record(flow)

    async def list_effects(
        self,
        *,
        run_id: str | None = None,
        group: str | None = None,
        statuses: Sequence[str] | None = None,
        limit: int = 100,
    ) -> EffectList:
        """Effects newest first, filtered by run, group and status, with their summary."""
        rows = await self._journal.list_effects(run_id, group, statuses, limit)
        records = self._supervisor.records(rows)
        summary = summarize(records) | {"budget": self._budgets.summary(run_id, group)} if records else None
        return EffectList(effects=records, summary=summary)

    async def set_budget(self, *, run_id: str | None = None, group: str | None = None, **limits: Any) -> BudgetRecord:
        """Sets or replaces the budget of a run or a group (`max_cost_usd`, `max_tokens`): see `budgets`."""
        return await self._budgets.set(scope_of(run_id, group), Limits(**limits))

    def budgets(self) -> list[BudgetRecord]:
        """Every budget, with what its scope has spent."""
        return self._budgets.records()

    async def runs(self, limit: int = 100) -> list[dict[str, Any]]:
        """Runs newest first, with how many effects each holds and how many are active."""
        return await self._journal.runs_overview(limit)

    async def groups(self, *, run_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Groups, the most recently used first, with their counts."""
        return await self._journal.groups_overview(run_id, limit)

    async def flows(self, *, run_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Flows newest first: id, run, policy, status, times and steps (the live status of a running one)."""
        flows = []
        for row in await self._journal.flows_page(run_id, limit):
            flow = self._flows.of_row(row)  # no second read of a row already in hand
            flows.append(
                {
                    "flow_id": flow.flow_id,
                    "run_id": flow.run_id,
                    "policy": flow.policy,
                    "status": flow.status,
                    "started_at": flow.started_at,
                    "finished_at": flow.finished_at,
                    "steps": [ref.to_json() for ref in flow.steps],
                }
            )
        return flows

    async def _members(self, group: str | None, effect_ids: Sequence[str] | None) -> list[Effect]:
        if (group is None) == (effect_ids is None):
            raise InvalidRequestError("give exactly one of `group` (a group or flow id) or `effect_ids` (a list)")
        if group is not None:
            ids = await self._journal.group_ids(group)
            if not ids:
                raise UnknownEffectError(f"unknown group {group!r}: no effect was ever dispatched to it")
        else:
            ids = list(dict.fromkeys(effect_ids or []))
        return await self._supervisor.get_many(ids)

    async def await_group(
        self,
        *,
        group: str | None = None,
        effect_ids: Sequence[str] | None = None,
        mode: AwaitMode = "all",
        timeout_s: float = 25.0,
        cursor: int = 0,
        k: int | None = None,
        cancel_rest: bool | None = None,
    ) -> GroupWait:
        """`await_group`: waits up to `timeout_s` for all (`all`), one more after `cursor` (`any`), one
        success (`first_success`) or `k` (`quorum`); see `completions.wait_group`."""
        check_await_arguments(mode, k, cancel_rest)
        effects = await self._members(group, effect_ids)
        return await wait_group(self._supervisor, effects, mode, cursor, timeout_s, k, cancel_rest)

    async def read_output(
        self, effect_id: str, cursor: int = 0, max_bytes: int = 65536, wait_s: float = 0.0
    ) -> OutputChunk:
        """Output from byte `cursor`, waiting up to `wait_s` for some while the effect may still print.
        `eof` once the effect is terminal and everything was returned."""
        effect = await self._supervisor.get(effect_id)
        data, after, eof = await effect.read_output(cursor, max_bytes, wait_s)
        return OutputChunk(effect_id=effect.effect_id, data=data, cursor=after, eof=eof, status=effect.status)

    async def output_tail(self, effect_id: str, max_bytes: int) -> tuple[str, int]:
        """The last `max_bytes` (at most) of the output, starting at a line where one starts within
        4 KiB, and the output's whole size."""
        output = (await self._supervisor.get(effect_id)).output
        start = max(0, output.size - max_bytes)
        text, _ = output.read(start, max_bytes)
        if start > 0:
            first_line = text.find("\n")
            text = text[first_line + 1 :] if 0 <= first_line < 4096 else text
        return text, output.size

    # --- cancelling -------------------------------------------------------------------------------

    async def cancel(
        self, effect_id: str, *, reason: str = "user", message: str | None = None, grace_s: float | None = None
    ) -> EffectRecord:
        """Cancels the effect: pending or queued at once; running: SIGTERM to its process group, SIGKILL
        after the grace. Returns once the group is gone (at most 50 s: then still `running`, the kill
        under way). A terminal effect comes back unchanged. Once asked, a cancel is seen through even if
        the caller goes away."""
        effect = await self._supervisor.get(effect_id)
        with anyio.CancelScope(shield=True):
            await self._supervisor.cancel(effect, reason, message, grace_s, within_s=CANCEL_WAIT_S)
        return effect.record()

    async def cancel_group(self, group: str, *, message: str | None = None) -> CancelledGroup:
        """Cancels every unfinished effect of the group (a flow id names its steps); returns once they ended."""
        return await self._cancel_all(await self._members(group, None), message)

    async def cancel_flow(self, flow_id: str, *, message: str | None = None) -> CancelledGroup:
        """Cancels every unfinished step of the flow; returns once they ended."""
        flow = await self._flows.get(flow_id)
        self._flows.cancel(flow, "user", message)
        return await self._cancel_all(await self._supervisor.get_many(flow.effect_ids), message)

    async def _cancel_all(self, effects: list[Effect], message: str | None) -> CancelledGroup:
        with anyio.CancelScope(shield=True):
            targets = await self._supervisor.cancel_many(effects, "user", message, within_s=CANCEL_WAIT_S)
        return CancelledGroup(cancelled=[e.effect_id for e in targets], effects=[e.record() for e in effects])

    async def _cancel_from_elsewhere(self, effect_id: str, message: str | None) -> bool:
        try:
            effect = await self._supervisor.get(effect_id)
        except UnknownEffectError:
            return False
        self._supervisor.request_cancel(effect, "user", message)
        return True

    async def stop_effects(self) -> None:
        """Cancels the effects (reason `shutdown`, each within its grace) as closing the engine would,
        but while the transport still serves, so a call waiting on an effect returns its record instead
        of being cut. Closing later finds nothing left."""
        self._flows.closing = True
        await self._supervisor.shutdown()

    # --- the change feed --------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """Counts every change of every effect (the dashboard's consistency marker)."""
        return self._feed.version

    @property
    def subscribers(self) -> int:
        """How many change subscriptions are open."""
        return self._feed.subscribers

    def changes(self, per_second: float = 10) -> AbstractAsyncContextManager[Changes]:
        """A subscription to the ids of the effects that change, at most `per_second` batches a second:
        `async with engine.changes() as changes: async for ids in changes: ...`."""
        return self._feed.subscribe(per_second)


def _attach(
    supervisor: Supervisor, flows: FlowManager, budgets: Budgets
) -> tuple[Budgets, Callable[[], Awaitable[None]]]:
    """Wires the flow manager and the budget keeper into the supervisor (templates, ends, spending);
    returns the keeper and what loads both at start, after recovery and before any waiting effect runs."""

    def ended(effect: Effect) -> None:
        budgets.observe(effect)
        flows.step_ended(effect)

    async def load() -> None:
        await flows.load()
        await budgets.load()

    supervisor.attach_flows(flows.render, ended)
    supervisor.attempts.spent = budgets.observe
    return budgets, load


def _supervisor(settings: Settings, journal: Journal, runner: Runner | None) -> Supervisor:
    return Supervisor(
        journal,
        feed=ChangeFeed(),
        output_dir=settings.output_dir,
        max_concurrency=settings.max_concurrency,
        output_limit_bytes=settings.output_limit_bytes,
        stall_after_s=settings.stall_after_s,
        result_grace_s=settings.result_grace_s,
        harness_limits={
            name: profile.max_concurrency
            for name, profile in settings.harnesses.items()
            if profile.max_concurrency is not None
        },
        keep_queued=settings.keep_queued,
        runner=runner,
    )


async def cancel_offline(db: Path, effect_id: str, message: str | None) -> bool:
    """With no live server on `db`: cancels a pending or queued effect in the journal itself (taking the
    journal's lock meanwhile). Returns False when the effect is not waiting (unknown, running, ended).
    Raises DatabaseBusyError when a live server owns the journal: ask it instead (`effectd cancel`)."""
    async with owning(db), Journal.open(db) as journal:
        return await cancel_waiting(journal, effect_id, message)


__all__ = ["Changes", "Dispatched", "Engine", "FlowDispatched", "ProgressSink", "cancel_offline"]
