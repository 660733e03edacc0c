"""Recovery at start: what the last server left behind.

Effects that were `running` when it died are ended: `failed` with error `interrupted`, or `cancelled`
when a cancel had been asked for (journaled as EFFECT_CANCEL_REQUESTED). First the runner kills
whatever is still alive of every recorded effect, whatever its state: a running effect's leader, and
any process that escaped (a daemon of a finished effect, grandchildren of a killed server).
`pending` and `queued` effects are loaded to be run.

What a start reads does not grow with the history: the effects not yet ended (by the index on their
status), and, of the effects whose ids the runner found something alive of, those the journal knows.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

from effectd.journal.store import Journal
from effectd.runner.base import RecordedProcess, Runner
from effectd.runner.git import Worktrees
from effectd.supervisor import events
from effectd.supervisor.effect import CancelRequest, Effect
from effectd.supervisor.events import Outcome
from effectd.supervisor.output import OutputLog
from effectd.supervisor.registry import Registry
from effectd.supervisor.workspaces import Workspaces
from effectd.supervisor.workspaces import finish as finish_workspace


async def recover(
    journal: Journal,
    runner: Runner,
    registry: Registry,
    workspaces: Workspaces | None = None,
    owners: Collection[str] | None = None,
) -> list[Effect]:
    """Ends the interrupted effects (finishing their worktrees, when isolated, as an ending effect's
    are); returns the waiting ones, loaded into the registry, to be driven. With `owners`, only the
    effects of those servers (this one, and those gone that it took over): a live server's effects and
    their processes are never touched."""
    rows = await journal.active_effects()
    if owners is not None:  # never a live server's effects
        rows = [row for row in rows if (row.get("owner") or "") in owners]
    interrupted = [row for row in rows if row["status"] == "running"]
    leaders = [RecordedProcess(r["effect_id"], r["pid"], r["pid_start"]) for r in interrupted]
    running = {r["effect_id"] for r in interrupted}
    found = await runner.leftover_ids()  # what is alive of any effect: only those are looked up, not the history
    recorded = await journal.effect_ids(owners) if found is None else await journal.known_effect_ids(found, owners)
    others = [RecordedProcess(effect_id) for effect_id in recorded if effect_id not in running]
    await runner.kill_leftovers([*leaders, *others])
    ended = []
    endings = []
    for row in interrupted:
        # At run time (a server that died is taken over) a reader may hold the effect already: the same one.
        effect = registry.peek(row["effect_id"]) or Effect.from_row(row, registry.existing_output(row["effect_id"]))
        if row["cancel_reason"] is not None:  # a cancel asked for before the crash stands
            cancel = CancelRequest(row["cancel_reason"], row["cancel_message"], None)
            outcome = Outcome("cancelled", cancel=cancel)
        else:
            outcome = Outcome("failed", error="interrupted")
        if workspaces is not None:
            why = outcome.cancel.reason if outcome.cancel else outcome.error
            outcome.workspace = await workspaces.finish(effect, outcome.status, why)
        ended.append(registry.adopt(effect))
        endings.append(events.ended(effect, outcome))
    if endings:
        for effect, event in zip(ended, await journal.try_append(*endings), strict=True):
            effect.apply(event)
            registry.add(effect)
    waiting = []
    for row in rows:
        if row["status"] != "running":
            effect = registry.peek(row["effect_id"]) or Effect.from_row(
                row, registry.existing_output(row["effect_id"], closed=False)
            )
            effect = registry.adopt(effect)
            registry.add(effect)
            waiting.append(effect)
    return waiting


async def cancel_waiting(
    journal: Journal, effect_id: str, message: str | None, worktrees: Worktrees | None = None
) -> bool:
    """Cancels a pending or queued effect of a journal no server runs (finishing its worktree, when an
    earlier attempt made one); False when it is not waiting."""
    row = await journal.effect(effect_id)
    if row is None or row["status"] not in ("pending", "queued"):
        return False
    effect = Effect.from_row(row, OutputLog(Path(os.devnull), 0, closed=True))  # a waiting effect printed nothing
    outcome = Outcome("cancelled", cancel=CancelRequest("user", message, None))
    if worktrees is not None:
        outcome.workspace = await finish_workspace(worktrees, effect, "cancelled", "user")
    (stamped,) = await journal.try_append(events.ended(effect, outcome))
    effect.apply(stamped)
    return True
