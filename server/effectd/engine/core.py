"""The engine: the one API that every front-end calls.

The MCP tools, the MCP resources, the Python API (`effectd.api`), the HTTP dashboard and the
command line all drive effectd through an `Engine`. They translate: arguments in, records out. None
of them holds SQL, observer wiring or cancel logic of its own; what they share is written here once:
dispatch (one effect, or a flow), following an effect in the foreground (progress, and the cancel
when the caller abandons), group waits, output reads, cancels, queries, and the change feed.

`Engine.open` joins the servers on the journal (see `effectd.peers.sessions`), recovers what the servers that
are gone left, and runs its components, each in its own task group: the supervisor (every running
effect), the flow manager, the control channel (`effectd cancel`, `effectd approve`, and the cancels and
approvals' answers other servers forward)
and the watch on the other servers' events. Closing stops the effects (reason `shutdown`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from effectd.config.settings import Settings
from effectd.engine.approvals import Approvals, wait_or_asked
from effectd.engine.budgets import BudgetRecord, Budgets, scope_of
from effectd.engine.follow import ProgressSink, follow_effect, follow_flow
from effectd.engine.prune import prune_live
from effectd.engine.queries import EngineQueries
from effectd.errors import DatabaseBusyError, InvalidRequestError, UnknownEffectError
from effectd.flows.manager import FlowManager
from effectd.flows.models import FlowRecord, FlowRequest
from effectd.journal.peers import Peers
from effectd.journal.store import Journal
from effectd.journal.usable import check_journal
from effectd.journal.writer import Retry
from effectd.model.arguments import EffectRequest, Limits
from effectd.model.records import (
    CANCEL_WAIT_S,
    CancelledGroup,
    CancelReason,
    EffectRecord,
    GroupWait,
)
from effectd.model.specs import build_spec
from effectd.peers.control import ControlChannel
from effectd.peers.ownership import StartLock, runner_alive
from effectd.peers.sessions import Sessions, joining
from effectd.runner.base import Runner
from effectd.runner.choose import open_runner
from effectd.runner.git import Worktrees
from effectd.supervisor.attempt import check_limits, check_sandbox
from effectd.supervisor.completions import AwaitMode, check_await_arguments, wait_group
from effectd.supervisor.core import Supervisor
from effectd.supervisor.effect import Effect
from effectd.supervisor.recovery import cancel_waiting
from effectd.supervisor.workspaces import check as check_isolation
from effectd.support.feed import ChangeFeed, Changes

ABANDONED = "the client abandoned the call"
GIVE_UP_S = 5.0  # on close, how long ends that a journal fault holds back may still wait for it


@dataclass(frozen=True)
class Dispatched:
    """A dispatch's answer: the effect's record, and whether this call created it (False: same key)."""

    record: EffectRecord
    new: bool


@dataclass(frozen=True)
class FlowDispatched:
    record: FlowRecord
    new: bool


class Engine(EngineQueries):
    """The effect engine behind every front-end. Open it with `Engine.open(settings)`."""

    approvals: Approvals  # set by `open` (issue 25): list_approvals, answer_approval, the dashboard's

    def __init__(
        self, settings: Settings, journal: Journal, supervisor: Supervisor, flows: FlowManager, sessions: Sessions
    ) -> None:
        self.settings = settings
        self._budgets = flows.budgets  # one keeper: a flow's `budget` is its group's
        self._journal = journal
        self._supervisor = supervisor
        self._flows = flows
        self._sessions = sessions
        self._feed = supervisor.feed

    @classmethod
    def open(cls, settings: Settings, *, runner: Runner | None = None) -> AbstractAsyncContextManager[Engine]:
        """Joins the servers on the database, recovers what gone servers left, runs effects; on exit
        stops them (reason `shutdown`). `async with Engine.open(settings) as engine: ...`"""
        return _open(cls, settings, runner)

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
        await check_isolation(spec)
        await check_sandbox(self._supervisor.attempts.runner, spec)
        check_limits(self._supervisor.attempts.runner, spec)
        effect, new = await self._supervisor.dispatch(spec, request.run_id)
        return Dispatched(effect.record(), new)

    async def dispatch_flow(self, request: FlowRequest) -> FlowDispatched:
        """Checks a flow and journals it with all its steps (and its `budget`) in one commit; a `flow_id`
        that names a flow with the same arguments gives that flow back (`new` False). `resume`: see flows.resume."""
        flow, new = await self._flows.submit(request)
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

    async def set_budget(self, limits: Limits, *, run_id: str | None = None, group: str | None = None) -> BudgetRecord:
        """Sets or replaces the budget of a run or a group (give one of them): see `budgets`."""
        return await self._budgets.set(scope_of(run_id, group), limits)

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
        waiting = partial(
            wait_group,
            self._supervisor.completions,
            effects,
            mode,
            cursor,
            timeout_s,
            k,
            cancel_rest,
            cancel=self._cancel_losers,
            sync=self._sessions.catch_up,
        )
        return await wait_or_asked(self.approvals, effects, cursor, waiting)  # approvals: wakes when one asks

    # --- cancelling -------------------------------------------------------------------------------

    async def cancel(
        self, effect_id: str, *, reason: CancelReason = "user", message: str | None = None, grace_s: float | None = None
    ) -> EffectRecord:
        """Cancels the effect: pending or queued at once; running: SIGTERM to its process group, SIGKILL
        after the grace. Returns once the group is gone (at most 50 s: then still `running`, the kill
        under way). A terminal effect comes back unchanged. Once asked, a cancel is seen through even if
        the caller goes away; asked again with a shorter `grace_s`, the SIGKILL comes sooner. Another
        server's effect is forwarded to it: PeerUnansweredError when it does not answer in time."""
        effect = await self._supervisor.get(effect_id)
        self._journal.check_writable(needed=not effect.terminal)
        if not effect.local and not effect.terminal:  # another server's: forwarded to it
            if await self._sessions.forward_cancel(effect, message, grace_s, CANCEL_WAIT_S) or effect.terminal:
                return effect.record()  # else its server was gone: taken over, it is this server's now
        with anyio.CancelScope(shield=True):
            await self._supervisor.cancel(effect, reason, message, grace_s, within_s=CANCEL_WAIT_S)
        return effect.record()

    async def cancel_group(self, group: str, *, message: str | None = None) -> CancelledGroup:
        """Cancels every unfinished effect of the group (a flow id names its steps); returns once they ended."""
        return await self._cancel_all(await self._members(group, None), message)

    async def cancel_flow(self, flow_id: str, *, message: str | None = None) -> CancelledGroup:
        """Cancels every unfinished step of the flow; returns once they ended."""
        flow = await self._flows.get(flow_id)
        self._journal.check_writable(needed=not all(e.terminal for e in flow.effects.values()))
        self._flows.cancel(flow, "user", message)
        return await self._cancel_all(await self._supervisor.get_many(flow.effect_ids), message)

    async def _cancel_all(self, effects: list[Effect], message: str | None) -> CancelledGroup:
        self._journal.check_writable(needed=not all(e.terminal for e in effects))
        with anyio.CancelScope(shield=True):
            cancelled = await self._cancel_losers(effects, "user", message, CANCEL_WAIT_S)
        return CancelledGroup(cancelled=cancelled, effects=[e.record() for e in effects])

    async def _cancel_losers(
        self, effects: list[Effect], reason: CancelReason, message: str | None, within_s: float
    ) -> list[str]:
        """Cancels `effects`, this server's with `reason` and other servers' forwarded to them with it (a
        race decided here cancels its losers `superseded` on any server); returns the ids that were cancelled."""
        async with anyio.create_task_group() as tg:  # other servers' effects: forwarded, side by side
            forwarded = await self._sessions.forward_cancels(tg, effects, reason, message, within_s)
            ours = [e for e in effects if e.local or e.terminal]
            targets = await self._supervisor.cancel_many(ours, reason, message, within_s=within_s)
        return [e.effect_id for e in effects if e in targets or e in forwarded]

    async def prune(self, before: str, forget_journal: bool = False) -> dict[str, Any]:
        """`effectd prune`: removes the output of the effects that ended before `before` (ISO time), and with
        `forget_journal` their events and rows (see `effectd.engine.prune`); effects in memory follow."""
        registry = self._supervisor.registry
        return await prune_live(self._journal, self.settings.output_dir, registry, before, forget_journal)

    async def stop_effects(self) -> None:
        """Cancels the effects (reason `shutdown`, each within its grace) as closing the engine would,
        but while the transport still serves, so a call waiting on an effect returns its record instead
        of being cut. Closing later finds nothing left."""
        self._flows.closing = True
        await self._supervisor.shutdown()


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
    supervisor.attempts.instead = flows.fan_out.instead_of_running
    supervisor.attempts.producer = supervisor.get
    return budgets, load


@asynccontextmanager
async def _open(cls: type[Engine], settings: Settings, runner: Runner | None) -> AsyncIterator[Engine]:
    # Checked first (JournalUnusableError names what makes it unusable), before anything is written.
    await anyio.to_thread.run_sync(check_journal, settings.db)
    retry = Retry(max_s=settings.journal_retry_max_s)
    async with (
        open_runner(settings, runner) as active,  # closed last: after the effects were stopped
        joining(settings.db, busy_timeout_s=settings.journal_busy_timeout_s, retry=retry) as joined,
    ):
        journal = joined.journal
        supervisor = _supervisor(settings, journal, active, joined.me.server_id, joined.owners)
        budgets = Budgets(journal, live_effects=supervisor.live_effects, request_cancel=supervisor.request_cancel)
        flows = FlowManager(settings, journal, supervisor, budgets=budgets)
        budgets, loading = _attach(supervisor, flows, flows.budgets)
        approvals = Approvals(supervisor)
        sessions = Sessions(
            joined.me,
            joined.peers,
            supervisor,
            flows,
            check_s=settings.peer_check_s,
            answer_s=settings.peer_answer_s,
            on_approval=approvals.seen,  # other servers' approvals are listed here too
            on_taken=approvals.settle,  # a dead server's sub-agents died with it: nobody waits for an answer
        )
        engine = cls(settings, journal, supervisor, flows, sessions)
        engine.approvals = approvals
        approvals.forward = sessions.forward_approval  # another server's sub-agent waits there: answered there
        approvals.owner_alive = sessions.runs_alive
        supervisor.peer_waiting_for = approvals.peer_waiting_for
        supervisor.attempts.gate = approvals.wire
        supervisor.attempts.ask_start = approvals.ask_start
        control = ControlChannel(
            journal,
            supervisor,
            engine.prune,
            settings.poll_control_s,
            joined.me.server_id,
            on_approve=partial(_answer_here, approvals),
        )

        async def loaded() -> None:  # every waiting effect loaded, none started: recovery is done
            await loading()
            await approvals.load()  # before a waiting step asks its start again
            joined.release()

        async with (
            budgets.running(),
            approvals.running(),
            supervisor.running(before_start=loaded),
            flows.running(),
            anyio.create_task_group() as tg,
        ):
            await flows.recover()
            await sessions.start()
            tg.start_soon(control.run)
            tg.start_soon(sessions.run)
            tg.start_soon(sessions.watch_peers)
            try:
                yield engine
            finally:
                flows.closing = True
                journal.give_up(within_s=GIVE_UP_S)
                tg.cancel_scope.cancel()


async def _answer_here(
    approvals: Approvals,
    approval_id: str,
    decision: str,
    message: str | None,
    updated_input: dict[str, Any] | None,
    by: str,
) -> dict[str, Any]:
    """An approval's answer another process sent (`effectd approve`, a server forwarding `answer_approval`):
    this server's sub-agent waits for it, so it is never forwarded on."""
    return await approvals.answer(
        approval_id, decision, message=message, updated_input=updated_input, by=by, forward=False
    )


def _supervisor(
    settings: Settings, journal: Journal, runner: Runner | None, owner: str, owners: set[str]
) -> Supervisor:
    supervisor = Supervisor(
        journal,
        owner=owner,
        owners=owners,
        feed=ChangeFeed(),
        output_dir=settings.output_dir,
        worktree_dir=settings.worktree_dir,
        max_concurrency=settings.max_concurrency,
        output_limit_bytes=settings.output_limit_bytes,
        stall_after_s=settings.stall_after_s,
        result_grace_s=settings.result_grace_s,
        result_limit_bytes=settings.result_limit_bytes,
        harness_limits={
            name: profile.max_concurrency
            for name, profile in settings.harnesses.items()
            if profile.max_concurrency is not None
        },
        keep_queued=settings.keep_queued,
        runner=runner,
    )
    supervisor.attempts.sandbox_hides = tuple(sandbox_hides(settings))
    return supervisor


def sandbox_hides(settings: Settings) -> list[str]:
    """What no sandboxed effect sees: the journal's folder (the real one too, when the path has links), the
    output folder, the worktrees' folder and the HTTP token file."""
    paths = [settings.db.parent, settings.db.resolve().parent, settings.output_dir, settings.worktree_dir]
    if settings.http.token_file is not None:
        paths.append(settings.http.token_file)
    return [str(path) for path in dict.fromkeys(paths)]


async def cancel_offline(db: Path, effect_id: str, message: str | None, worktree_dir: Path | None = None) -> bool:
    """With no live server running the effect: cancels it in the journal itself if it is pending or
    queued (holding the journal's start-up lock, so no server takes it over meanwhile). Returns False
    when the effect is not waiting (unknown, running, ended). Raises DatabaseBusyError when a live
    server runs it: ask that server instead (`effectd cancel`). An earlier attempt's git worktree is
    finished as an ending effect's is (`worktree_dir`: the settings' `worktree_dir`)."""
    worktrees = Worktrees(worktree_dir or db.parent / f"{db.stem}.worktrees")
    await anyio.to_thread.run_sync(check_journal, db)
    lock = StartLock(db)
    await lock.acquire()
    try:
        async with Journal.open(db) as journal, Peers.open(db) as peers:
            row = await journal.effect(effect_id)
            if row is not None and await _runner_alive(peers, row.get("owner")):
                raise DatabaseBusyError(f"a live effectd server runs {effect_id}; ask it with `effectd cancel`")
            return await cancel_waiting(journal, effect_id, message, worktrees)
    finally:
        lock.release()


async def _runner_alive(peers: Peers, owner: str | None) -> bool:
    return runner_alive(owner, {row["server_id"]: row for row in await peers.servers()}, peers.path)


__all__ = ["Changes", "Dispatched", "Engine", "FlowDispatched", "ProgressSink", "cancel_offline"]
