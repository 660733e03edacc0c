"""What the engine answers without changing anything: records, pages, output, counters and the
change feed (the read side of `Engine`, which inherits it)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from effectd.config.settings import Settings
from effectd.engine.budgets import BudgetRecord, Budgets
from effectd.flows.manager import FlowManager
from effectd.flows.models import FlowRecord
from effectd.journal.store import Journal
from effectd.journal.summaries import summarize_effects
from effectd.model.records import EffectList, EffectRecord, OutputChunk
from effectd.supervisor.core import Supervisor
from effectd.support.feed import ChangeFeed, Changes

if TYPE_CHECKING:
    from effectd.peers.sessions import Sessions


class EngineQueries:
    """Reads: every record, page and counter a front-end shows; see `Engine`."""

    settings: Settings
    _journal: Journal
    _supervisor: Supervisor
    _flows: FlowManager
    _budgets: Budgets
    _sessions: Sessions
    _feed: ChangeFeed

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
            "server_id": self._sessions.me.server_id,
            "default_run_id": self.default_run_id,
            "max_concurrency": self.settings.max_concurrency,
        }

    def stats(self) -> dict[str, int]:
        """Counters for operators, tests and benchmarks: the journal's transactions so far (group commit
        makes them far fewer than events), and the effects of this engine not yet terminal."""
        return {
            "journal_transactions": self._journal.batches,
            "journal_commits_in_flight": self._journal.in_flight,
            "journal_events_held_back": self._journal.held_back,  # through a journal fault, until it takes them
            "active_effects": len(self._supervisor.live_effects()),
        }

    def harnesses(self) -> list[dict[str, Any]]:
        profiles = self.settings.harnesses
        return [profiles[name].to_json() for name in sorted(profiles)]

    async def poll(self, effect_id: str) -> EffectRecord:
        """The effect's current record; UnknownEffectError names an unknown id."""
        return (await self._supervisor.get(effect_id)).record()

    async def poll_flow(self, flow_id: str, wait_s: float = 0.0) -> FlowRecord:
        """The flow's current record, after waiting up to `wait_s` for it to end."""
        flow = await self._flows.get(flow_id)
        if wait_s > 0 and flow.finished_at is None:
            flow = await self._sessions.wait_flow(self._flows, flow, wait_s)
        return await self._flows.record(flow)

    async def list_effects(
        self,
        *,
        run_id: str | None = None,
        group: str | None = None,
        statuses: Sequence[str] | None = None,
        limit: int = 100,
        summary: bool = True,
    ) -> EffectList:
        """Effects newest first, filtered by run, group and status (at most `limit`), with the summary of
        every effect the filter matches, not only of those returned (`summary=False`: without it)."""
        rows = await self._journal.list_effects(run_id, group, statuses, limit)
        records = self._supervisor.records(rows)
        totals = await summarize_effects(self._journal, run_id, group, statuses) if summary else None
        if totals is not None and (budget := self._budgets.summary(run_id, group)) is not None:
            totals["budget"] = budget  # the group's (else the run's) budget, when it has one
        return EffectList(effects=records, summary=totals)

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
