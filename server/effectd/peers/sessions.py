"""Sessions: several servers on one journal, as two agent sessions in one project run them.

Each server owns the effects and flows it dispatched (`owner`). What another server does reaches
this one through the journal: `Sessions` watches it cheaply (SQLite's `PRAGMA data_version`, on a
connection of its own, every `watch_s`), reads the events written since the last seq it saw, and
applies those of the other servers' effects that this server holds (an effect a caller polls,
streams, awaits or depends on) with the same fold its own effects use: waiters wake, `await_group`
counts the completion, the change feed tells the resources and the dashboard. The output of another
server's running effect is followed through its log file in the shared output directory.

A cancel of another live server's effect is forwarded to it through the journal's `control` table,
as `effectd cancel` is, and answered once the owner journaled the effect's end. So is the answer to an
approval another server's sub-agent asked for (issue 25): that sub-agent waits on its own server, which
answers it and hands the approval back in the request's result. The approvals other servers journal
are told to `on_approval` (the engine's Approvals), whichever effects this server holds.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from effectd.errors import InvalidRequestError, PeerUnansweredError, UnknownEffectError
from effectd.flows.manager import FlowManager
from effectd.flows.models import Flow
from effectd.journal.approvals import ANSWERED, REQUESTED
from effectd.journal.peers import Peers
from effectd.journal.projection import TERMINAL_EVENTS, Event
from effectd.journal.store import Journal
from effectd.journal.writer import Retry
from effectd.model.records import CancelReason
from effectd.peers.ownership import OPEN_HERE, ServerIdentity, StartLock, runner_alive, server_alive
from effectd.supervisor.core import Supervisor
from effectd.supervisor.effect import Effect
from effectd.supervisor.recovery import recover

log = logging.getLogger("effectd")

WATCH_S = 0.1
CHECK_S = 1.0  # a live server sees a dead peer within 5 s (CONTRACT.md); the look is one query and a /proc read
ANSWER_S = 10.0  # as `effectd cancel` waits for a server's answer
APPROVAL_EVENTS = (REQUESTED, ANSWERED)
_BATCH = 2000


@dataclass
class Joined:
    """A server that joined a journal: who it is, its journal, its view of the others, the servers
    whose effects it runs, and `release` for the start-up lock once its recovery is done."""

    me: ServerIdentity
    journal: Journal
    peers: Peers
    owners: set[str]
    release: Callable[[], None]


@asynccontextmanager
async def joining(db: Path, *, busy_timeout_s: float = 10.0, retry: Retry | None = None) -> AsyncIterator[Joined]:
    """Opens the journal as one more server on it: under the start-up lock (released by `release`, or
    at the latest when the context ends) migrates it, registers this server and takes over the gone
    ones. On exit the server is recorded as stopped: what it leaves waiting is the next server's."""
    me = ServerIdentity.this_process()
    lock = StartLock(db)
    await lock.acquire()
    try:
        async with Journal.open(db, busy_timeout_s=busy_timeout_s, retry=retry) as journal, Peers.open(db) as peers:
            here = (me.server_id, str(db.resolve()))  # noqa: ASYNC240 - a path, resolved once at start
            OPEN_HERE.add(here)
            try:
                owners = await take_over_gone(peers, me, db)
                yield Joined(me, journal, peers, owners, lock.release)
            finally:
                OPEN_HERE.discard(here)
                with anyio.CancelScope(shield=True):
                    try:
                        await peers.stopped(me.server_id)
                    except Exception as exc:  # a journal fault: the next server sees its pid gone instead
                        log.warning("could not record server %s as stopped: %s", me.server_id, exc)
    finally:
        lock.release()


@asynccontextmanager
async def _holding(lock: StartLock) -> AsyncIterator[None]:
    await lock.acquire()
    try:
        yield
    finally:
        lock.release()


async def take_over_gone(peers: Peers, me: ServerIdentity, db: Path) -> set[str]:
    """Registers this server and takes over the servers that are gone (stopped, or their process is
    no longer the one recorded); returns the ids of the servers whose effects it now runs (its own
    included). Runs under the journal's start-up lock."""
    await peers.register(me.server_id, me.pid, me.pid_start, me.host)
    rows = await peers.servers()
    gone = [r["server_id"] for r in rows if r["adopted_by"] is None and not server_alive(r, db, me.host)]
    return await peers.adopt(me.server_id, gone)


class Sessions:
    """This server among the others on its journal: follows their events, forwards cancels to them."""

    def __init__(
        self,
        me: ServerIdentity,
        peers: Peers,
        supervisor: Supervisor,
        flows: FlowManager,
        *,
        watch_s: float = WATCH_S,
        check_s: float = CHECK_S,
        answer_s: float = ANSWER_S,
        on_approval: Callable[[Event], None] | None = None,
        on_taken: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.me = me
        self._on_approval = on_approval  # told every approval event of another server's effect
        self._on_taken = on_taken  # once a take-over settled the effects: their approvals are settled too
        self._peers = peers
        self._sup = supervisor
        self._flows = flows
        self._taking_over = anyio.Lock()
        self._watch_s = watch_s
        self._check_s = check_s  # how often to look for servers that died (`peer_check_s`)
        self._answer_s = answer_s  # how long another server has to answer a forwarded cancel (`peer_answer_s`)
        self._seen = 0
        self._version: int | None = None
        self._lock = anyio.Lock()
        self._changed = anyio.Event()

    async def start(self) -> None:
        """From now on, events after the journal's current end are followed."""
        self._version = await self._peers.data_version()
        self._seen = await self._peers.head()

    async def run(self) -> None:
        """Watches the journal until cancelled; a failed look is tried again on the next tick."""
        while True:
            await anyio.sleep(self._watch_s)
            try:
                self._follow_outputs()
                version = await self._peers.data_version()
                if version != self._version:
                    self._version = version
                    await self.catch_up()
            except Exception:
                log.exception("watching the journal for other servers' events failed")

    async def watch_peers(self) -> None:
        """Every `check_s`, looks for servers that died and takes them over as a server starting would, so
        a live server settles a dead peer's effects within seconds, not at the next start. Dead means
        its process is gone: its pid no longer runs the process started at the recorded time (from
        /proc, so neither pid reuse nor the wall clock misleads it), or it recorded its stop. A stopped
        (SIGSTOP) or busy server is alive however long it has written nothing. A server of another host
        is taken as alive: its process cannot be looked at from here."""
        while True:
            await anyio.sleep(self._check_s)
            try:
                rows = await self._peers.unadopted()
                if any(r["server_id"] != self.me.server_id and not self._alive(r) for r in rows):
                    await self.take_over()
            except Exception:  # a busy database, or the start-up lock held long: looked at again next tick
                log.exception("looking for servers that are gone failed")

    def _alive(self, row: Mapping[str, Any]) -> bool:
        return server_alive(row, self._peers.path, self.me.host)

    async def catch_up(self) -> int:
        """Applies every event committed after the last one seen; returns the seq it has seen up to
        (everything up to it is applied: `await_group` counts completions only up to there)."""
        async with self._lock:
            took = False
            while True:
                self._seen, read, events = await self._peers.events_after(self._seen, _BATCH, self._wants)
                for event in events:
                    self._take(event)
                took = took or read > 0
                if read < _BATCH:
                    break
            if took:
                self._changed.set()
                self._changed = anyio.Event()
            return self._seen

    def _wants(self, event_type: str, effect_id: str | None) -> bool:
        """Whether `_take` does anything with such an event (this server's own effects' events it skips)."""
        if effect_id is None:
            return False
        effect = self._sup.registry.peek(effect_id)
        if event_type in APPROVAL_EVENTS:
            return effect is None or not effect.local
        return effect is None or (not effect.local and not effect.terminal and event_type != "EFFECT_REQUESTED")

    def _take(self, event: Event) -> None:
        """An event committed by any server: applied to its effect if this server holds it and another
        server drives it (this server's own events are applied as they commit); told to the change feed."""
        effect = self._sup.registry.peek(event.effect_id or "")
        if event.type in APPROVAL_EVENTS and self._on_approval is not None and (effect is None or not effect.local):
            self._on_approval(event)
        if effect is None:
            self._sup.feed.publish(event.effect_id or "")
        elif not effect.local and not effect.terminal and event.type != "EFFECT_REQUESTED":
            if event.type in TERMINAL_EVENTS:
                effect.output.refresh()  # the last of its output, before readers see the end
            self._sup.apply(effect, event)

    async def wait_flow(self, flows: FlowManager, flow: Flow, within_s: float) -> Flow:
        """Waits up to `within_s` for the flow to end; another server's flow ends through the journal."""
        if flows.runs(flow.flow_id):
            await flows.wait(flow, within_s)
            return flow
        with anyio.move_on_after(within_s):
            while flow.finished_at is None:
                with anyio.move_on_after(1.0):
                    await self._changed.wait()
                flow = await flows.get(flow.flow_id)
        return flow

    def _follow_outputs(self) -> None:
        for effect in self._sup.registry.followed():
            if effect.status == "running" and effect.output.refresh():
                effect.notify()

    # --- other servers ----------------------------------------------------------------------------

    async def runs_alive(self, owner: str | None) -> bool:
        """Whether a live server runs the effects of `owner` (the owner itself, or the one that took it over)."""
        return runner_alive(owner, {row["server_id"]: row for row in await self._peers.servers()}, self._peers.path)

    async def take_over(self) -> set[str]:
        """Takes over the servers that are gone now, as a server starting would (recovery rules): their
        running effects end (`interrupted`, leftovers killed), their waiting effects and unfinished
        flows run here. Returns the ids of the servers taken over now (none when another server
        took them first: one transaction decides)."""
        async with self._taking_over, _holding(StartLock(self._peers.path)):  # apart from starts, offline cancels
            rows = await self._peers.servers()
            gone = [r["server_id"] for r in rows if r["adopted_by"] is None and not self._alive(r)]
            if not gone or self._sup.closing:
                return set()
            before = set(self._sup.owners or ())
            owners = await self._peers.adopt(self.me.server_id, gone)
            taken = owners - before
            if not taken:
                return taken
            self._sup.owners = owners
            await self.catch_up()  # the effects readers hold here are as the journal has them
            with anyio.CancelScope(shield=True):
                sup = self._sup
                waiting = await recover(sup.journal, sup.attempts.runner, sup.registry, sup.workspaces, taken)
                sup.completions.notify()
                for effect in waiting:
                    sup.limits.apply_spec(effect.spec)
                await self._flows.load(taken)
                for effect in waiting:
                    sup._spawn_driver(effect)  # as at start: each waiting effect gets its driver here
                await self._flows.recover()
                if self._on_taken is not None:
                    await self._on_taken()
            log.warning("took over the effects of server(s) %s, which are gone", ", ".join(sorted(taken)))
            return taken

    async def forward_cancels(
        self, tg: TaskGroup, effects: Sequence[Effect], reason: CancelReason, message: str | None, within_s: float
    ) -> list[Effect]:
        """Forwards the cancel of each unfinished effect of another live server, in `tg`; returns them
        (an effect whose server does not answer in time is taken out of the list once its request is
        withdrawn). The effects of a server that is gone are taken over first (then cancelled here, by
        the caller)."""
        theirs = [e for e in dict.fromkeys(effects) if not e.local and not e.terminal]
        if theirs and not all([await self.runs_alive(e.state.owner) for e in theirs]):
            await self.take_over()
        forwarded: list[Effect] = []

        async def forward(effect: Effect) -> None:
            try:
                await self.forward_cancel(effect, message, None, within_s, reason)
            except PeerUnansweredError as exc:
                log.warning("%s", exc)
                forwarded.remove(effect)

        for effect in theirs:
            if not effect.local and not effect.terminal and await self.runs_alive(effect.state.owner):
                forwarded.append(effect)
                tg.start_soon(forward, effect)
        return forwarded

    async def forward_cancel(
        self,
        effect: Effect,
        message: str | None,
        grace_s: float | None,
        within_s: float,
        reason: CancelReason = "user",
    ) -> bool:
        """Asks the live server that runs `effect` to cancel it, and waits (at most `within_s`) until its
        end is journaled and seen here; True. That server must answer the request within `answer_s`;
        one that does not (stopped, hung) has the request withdrawn, so it never carries it out later,
        and PeerUnansweredError says so. When no live server runs it, this server takes the gone one
        over (recovery rules) and returns False: the effect is then ended, or this server's to cancel."""
        if not await self.runs_alive(effect.state.owner):
            await self.take_over()
            return False
        deadline = anyio.current_time() + within_s
        with anyio.CancelScope(shield=True):
            request_id = await self._peers.request_cancel(effect.effect_id, message, grace_s, reason, self.me.server_id)
        answer = None
        try:
            with anyio.move_on_after(min(self._answer_s, within_s)):
                answer = await self._answer(effect, request_id)
        finally:
            if answer is None:  # also when the caller went away: a request nobody waits for is never carried out
                with anyio.CancelScope(shield=True):
                    answer = None if await self._peers.withdraw(request_id) else await self._peers.answer(request_id)
        if answer is None and not effect.terminal:
            if not await self.runs_alive(effect.state.owner):
                await self.take_over()  # the owner died meanwhile: recovery rules apply
                return effect.terminal
            raise PeerUnansweredError(
                f"the server {effect.state.owner} that runs {effect.effect_id} did not answer the cancel within "
                f"{min(self._answer_s, within_s):g} s (it may be stopped or hung); the request was withdrawn and "
                "will not be carried out later. Cancel again once that server answers, or stop it: a server "
                "that is gone has its effects settled by the others within seconds"
            )
        with anyio.move_on_at(deadline):
            while answer == "accepted" and not effect.terminal:
                with anyio.move_on_after(self._watch_s):
                    await effect.done.wait()
                if not effect.terminal and not await self.runs_alive(effect.state.owner):
                    await self.take_over()  # the owner died meanwhile: recovery rules apply
                    return effect.terminal
        return True

    async def forward_approval(self, effect: Effect, answer: dict[str, Any]) -> dict[str, Any]:
        """Has the live server that runs `effect`, whose sub-agent waits for the approval, give it `answer`
        (`approval_id`, `decision`, `message`, `decided_by`, and any `updated_input`); returns the approval
        as that server answered it. That server must answer within `answer_s`; one that does not (stopped,
        hung) has the request withdrawn, so it never carries it out later, and PeerUnansweredError says so.
        Its refusal (the approval was answered meanwhile) is raised here as it was raised there."""
        owner, approval_id = effect.state.owner, answer["approval_id"]
        if not await self.runs_alive(owner):
            raise InvalidRequestError(
                f"approval {approval_id} cannot be answered: the server {owner} whose sub-agent asked for it is "
                "gone, and the sub-agent with it (the approval is denied when the servers settle its effect)"
            )
        with anyio.CancelScope(shield=True):
            request_id = await self._peers.request_approval(effect.effect_id, answer, self.me.server_id)
        replied = result = None
        try:
            with anyio.move_on_after(self._answer_s):
                replied = await self._answer(effect, request_id, ended=False)
                while replied == "accepted" and (result := await self._peers.result(request_id)) is None:  # noqa: ASYNC110 - another process writes it
                    await anyio.sleep(self._watch_s)
        finally:
            if replied is None:  # also when the caller went away: a request nobody waits for is never carried out
                with anyio.CancelScope(shield=True):
                    replied = None if await self._peers.withdraw(request_id) else await self._peers.answer(request_id)
        if replied is None:
            raise PeerUnansweredError(
                f"the server {owner} whose sub-agent asked for approval {approval_id} did not answer within "
                f"{self._answer_s:g} s (it may be stopped or hung); the request was withdrawn and will not be "
                "carried out later. Answer again once that server answers"
            )
        if replied != "accepted" or result is None:
            raise PeerUnansweredError(
                f"the server {owner} took the answer to approval {approval_id} but said nothing of it within "
                f"{self._answer_s:g} s; list_approvals shows whether it was answered"
            )
        if "error" in result:
            raise (UnknownEffectError if result.get("unknown") else InvalidRequestError)(str(result["error"]))
        return dict(result["approval"])

    async def _answer(self, effect: Effect, request_id: int, *, ended: bool = True) -> str | None:
        """The owner's answer to a request, polled; None (unanswered) once its owner is gone, or (`ended`:
        a cancel) once the effect ended."""
        while (answer := await self._peers.answer(request_id)) is None:
            if (ended and effect.terminal) or not await self.runs_alive(effect.state.owner):
                return None
            with anyio.move_on_after(self._watch_s):
                await (effect.done.wait() if ended else anyio.sleep(self._watch_s))
        return answer
