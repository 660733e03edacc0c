"""Budgets: a cap on what the harness effects of a run or a group may spend (CONTRACT.md, "Group
strategies and budgets").

Spending is what the harness parsers read: an effect's final result (`cost_usd`, and `usage` as
input plus output tokens), and, while it runs, the figures its CLI streams (kept in its progress as
`cost_usd` and `tokens`: Claude Code's usage on each assistant message, pi's and opencode's cost per
message or step). The keeper holds, per budget, each counted effect's latest figures. The supervisor
tells it of every change (`observe`, synchronous: from the output pump and at an effect's end).

Once spending reaches a limit, at once and in that same call: the scope's running harness effects
and all its pending and queued effects are asked to stop (reason `budget`), and any later dispatch
into the scope is refused (`check`) until `set_budget` raises the limit. BUDGET_EXCEEDED is then
journaled by the keeper's own task, with what was spent, so the refusal holds after a restart.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
from pydantic import BaseModel

from effectd.errors import BudgetExceededError, InvalidRequestError
from effectd.harness.usage import usage_cost, usage_count, usage_tokens
from effectd.journal.budgets import budget_rows, spending_rows
from effectd.journal.projection import Event
from effectd.journal.store import Journal
from effectd.model.arguments import Limits
from effectd.model.records import CancelReason, now_iso
from effectd.supervisor.effect import Effect
from effectd.supervisor.runs import check_run_id

log = logging.getLogger("effectd")


class BudgetRecord(BaseModel):
    """What `set_budget` returns, and what `list_effects`' summary shows as `budget`."""

    scope: dict[str, str]  # {"run_id": ...} or {"group": ...}
    max_cost_usd: float | None
    max_tokens: int | None
    spent_cost_usd: float
    spent_tokens: int
    exceeded: bool


@dataclass(frozen=True)
class Spend:
    cost_usd: float = 0.0
    tokens: int = 0


def spend_of(kind: str, result: Any, progress: Any) -> Spend:
    """What one effect spent: its result's cost and usage, else what its progress had counted (a run
    cancelled before its final event keeps what it streamed). Command effects spend nothing. A figure
    that is negative, NaN, infinite or absurd counts as none (the parsers refuse them; this guards a
    result file's figures, and a journal written before they did)."""
    if kind != "harness":
        return Spend()
    cost: float | None = None
    tokens: int | None = None
    if isinstance(result, dict):
        cost, tokens = usage_cost(result.get("cost_usd")), usage_tokens(result.get("usage"))
    if isinstance(progress, dict):
        cost = cost if cost is not None else usage_cost(progress.get("cost_usd"))
        tokens = tokens if tokens is not None else usage_count(progress.get("tokens"))
    return Spend(cost or 0.0, tokens or 0)


@dataclass(frozen=True)
class Scope:
    """A run or a group (a flow's steps are the group named by its flow id)."""

    kind: Literal["run", "group"]
    name: str

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.name

    def holds(self, effect: Effect) -> bool:
        return (effect.run_id if self.kind == "run" else effect.spec.group) == self.name

    def to_json(self) -> dict[str, str]:
        return {"run_id" if self.kind == "run" else "group": self.name}

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r}"


@dataclass(eq=False)
class Budget:
    scope: Scope
    max_cost_usd: float | None
    max_tokens: int | None
    run_id: str | None = None
    exceeded: bool = False  # stays so until the budget is set again
    recorded: Spend = Spend()  # what BUDGET_EXCEEDED recorded (a crash may lose live figures after it)
    by_effect: dict[str, Spend] = field(default_factory=dict)
    _cost: float = 0.0
    _tokens: int = 0

    def count(self, effect_id: str, spend: Spend) -> None:
        """Takes `spend` as the effect's figures so far (replacing what it had reported before)."""
        old = self.by_effect.get(effect_id, Spend())
        self.by_effect[effect_id] = spend
        self._cost = round(self._cost + spend.cost_usd - old.cost_usd, 10)
        self._tokens += spend.tokens - old.tokens

    @property
    def spent(self) -> Spend:
        return Spend(max(self._cost, self.recorded.cost_usd), max(self._tokens, self.recorded.tokens))

    def reached(self) -> bool:
        spent = self.spent
        return (self.max_cost_usd is not None and spent.cost_usd >= self.max_cost_usd) or (
            self.max_tokens is not None and spent.tokens >= self.max_tokens
        )

    def describe(self) -> str:
        """What was spent against which limit, e.g. "$0.0600 spent of max_cost_usd $0.0500, 812 tokens"."""
        spent = self.spent
        cost = f"${spent.cost_usd:.4f} spent"
        if self.max_cost_usd is not None:
            cost += f" of max_cost_usd ${self.max_cost_usd:.4f}"
        tokens = f"{spent.tokens} tokens"
        if self.max_tokens is not None:
            tokens += f" of max_tokens {self.max_tokens}"
        return f"{cost}, {tokens}"

    def record(self) -> BudgetRecord:
        spent = self.spent
        return BudgetRecord(
            scope=self.scope.to_json(),
            max_cost_usd=self.max_cost_usd,
            max_tokens=self.max_tokens,
            spent_cost_usd=round(spent.cost_usd, 6),
            spent_tokens=spent.tokens,
            exceeded=self.exceeded or self.reached(),
        )


def scope_of(run_id: str | None, group: str | None) -> Scope:
    """The scope `set_budget` names: exactly one of a run and a group."""
    if (run_id is None) == (group is None):
        raise InvalidRequestError("give exactly one of `run_id` (a run's budget) or `group` (a group's or flow's)")
    if run_id is not None:
        check_run_id(run_id)
        return Scope("run", run_id)
    assert group is not None
    if not group or "\0" in group or len(group) > 256:
        raise InvalidRequestError("a group is 1 to 256 characters without NUL")
    return Scope("group", group)


class Budgets:
    """Keeps the budgets: counts spending, stops a scope that reached its limit, refuses dispatches into it."""

    def __init__(
        self,
        journal: Journal,
        *,
        live_effects: Callable[[], list[Effect]],
        request_cancel: Callable[[Effect, CancelReason, str], object],
    ) -> None:
        """`live_effects`: the effects in memory (a scope's spending, what a spent scope stops);
        `request_cancel`: asks one of them to stop (the supervisor's)."""
        self._journal = journal
        self._live_effects, self._request_cancel = live_effects, request_cancel
        self._budgets: dict[tuple[str, str], Budget] = {}
        self._send, self._recv = anyio.create_memory_object_stream[Event](math.inf)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Budgets]:
        """Journals BUDGET_EXCEEDED events in the keeper's own task until the context ends."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._write)
            try:
                yield self
            finally:
                self._send.close()

    async def _write(self) -> None:
        async with self._recv:
            async for event in self._recv:
                try:
                    with anyio.CancelScope(shield=True):
                        await self._journal.append(event)
                except Exception:  # recounted from the effects at the next start
                    log.exception("budget of %s %r: BUDGET_EXCEEDED not journaled", *budget_key_of(event))

    # --- setting ----------------------------------------------------------------------------------

    def event(self, scope: Scope, limits: Limits, run_id: str | None = None) -> Event:
        """The BUDGET_SET event of a new budget (`run_id`: the run it is journaled under, if any)."""
        data = {"kind": scope.kind, "name": scope.name, **limits.model_dump(), "set_at": now_iso()}
        return Event("BUDGET_SET", scope.name if scope.kind == "run" else run_id, None, data)

    async def set(self, scope: Scope, limits: Limits) -> BudgetRecord:
        """Sets or replaces the budget of `scope` (journaled first); a limit already reached stops the scope."""
        (event,) = await self._journal.try_append(self.event(scope, limits))
        return await self.adopt(event)

    async def adopt(self, event: Event) -> BudgetRecord:
        """Takes a committed BUDGET_SET: counts what the scope spent so far and enforces the limit."""
        data = event.data
        scope = Scope(data["kind"], data["name"])
        budget = Budget(scope, data.get("max_cost_usd"), data.get("max_tokens"), event.run_id)
        self._budgets[budget.scope.key] = budget
        await self._count(budget)
        if budget.reached():
            self._exceed(budget)
        return budget.record()

    def for_flow(self, flow_id: str, run_id: str, limits: Limits | None) -> list[Event]:
        """For a new flow: refuses it when its run's (or group's) budget is spent; returns the BUDGET_SET
        of its `budget` to commit with it, if it has one."""
        self.check(run_id, flow_id)
        return [self.event(Scope("group", flow_id), limits, run_id)] if limits is not None else []

    async def adopt_all(self, events: list[Event]) -> None:
        for event in events:
            await self.adopt(event)

    async def load(self) -> None:
        """Loads the journal's budgets at start (after recovery, before any waiting effect starts); the
        waiting effects of a scope whose budget is spent are cancelled (reason `budget`)."""
        for row in await budget_rows(self._journal):
            budget = Budget(Scope(row["kind"], row["name"]), row["max_cost_usd"], row["max_tokens"], row["run_id"])
            if row["exceeded_at"] is not None:
                budget.exceeded = True
                budget.recorded = Spend(row["spent_cost_usd"] or 0.0, row["spent_tokens"] or 0)
            self._budgets[budget.scope.key] = budget
            await self._count(budget)
            if budget.exceeded or budget.reached():
                self._exceed(budget, journal=not budget.exceeded)

    async def _count(self, budget: Budget) -> None:
        live = {e.effect_id: e for e in self._live_effects() if budget.scope.holds(e)}
        for row in await spending_rows(self._journal, *budget.scope.key):
            if row["effect_id"] not in live and row["effect_id"] not in budget.by_effect:
                spend = spend_of(row["kind"], _loads(row["result"]), _loads(row["progress"]))
                budget.count(row["effect_id"], spend)
        for effect in live.values():
            budget.count(effect.effect_id, spend_of(effect.spec.kind, effect.result, effect.progress))

    # --- spending ---------------------------------------------------------------------------------

    def observe(self, effect: Effect) -> None:
        """Told when an effect reported more spending, or ended: counts it, and stops a scope that reached
        its limit. Synchronous, and never raises into the supervisor."""
        if not self._budgets or effect.spec.kind != "harness":
            return
        try:
            spend = spend_of(effect.spec.kind, effect.result, effect.progress)
            for key in (("run", effect.run_id), ("group", effect.spec.group or "")):
                budget = self._budgets.get(key)
                if budget is not None:
                    budget.count(effect.effect_id, spend)
                    if not budget.exceeded and budget.reached():
                        self._exceed(budget)
        except Exception:
            log.exception("effect %s: counting its spending failed", effect.effect_id)

    def _exceed(self, budget: Budget, *, journal: bool = True) -> None:
        """Stops the scope: its running harness effects and all its waiting ones (reason `budget`). A
        harness that already printed its final event is left to end: its work is done and paid for."""
        budget.exceeded = True
        message = f"budget of {budget.scope} reached: {budget.describe()}"
        for effect in self._live_effects():
            running = effect.status == "running"
            if budget.scope.holds(effect) and (
                not running or (effect.spec.kind == "harness" and not effect.final_event_seen)
            ):
                self._request_cancel(effect, "budget", message)
        if journal:
            spent = budget.spent
            data: dict[str, Any] = {"kind": budget.scope.kind, "name": budget.scope.name, "exceeded_at": now_iso()}
            data |= {"spent_cost_usd": spent.cost_usd, "spent_tokens": spent.tokens}
            self._send.send_nowait(Event("BUDGET_EXCEEDED", budget.run_id, None, data))

    # --- asking -----------------------------------------------------------------------------------

    def check(self, run_id: str, group: str | None) -> None:
        """Refuses a dispatch into a run or group whose budget is spent, saying what was spent against what."""
        for key in (("run", run_id), ("group", group or "")):
            budget = self._budgets.get(key)
            if budget is not None and (budget.exceeded or budget.reached()):
                raise BudgetExceededError(
                    f"the budget of {budget.scope} is spent ({budget.describe()}), so nothing more is dispatched "
                    "into it; raise the limit with set_budget, or dispatch into another run or group"
                )

    def records(self) -> list[BudgetRecord]:
        return [self._budgets[key].record() for key in sorted(self._budgets)]

    def summary(self, run_id: str | None, group: str | None) -> dict[str, Any] | None:
        """The budget `list_effects` shows: the group's if it has one, else the run's."""
        budget = self._budgets.get(("group", group or "")) or self._budgets.get(("run", run_id or ""))
        return budget.record().model_dump() if budget is not None else None


def budget_key_of(event: Event) -> tuple[str, str]:
    return event.data.get("kind", "?"), event.data.get("name", "?")


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)
