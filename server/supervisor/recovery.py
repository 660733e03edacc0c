"""Recovery at start: what the last server left behind.

Effects that were `running` when it died are ended: `failed` with error `interrupted`, or `cancelled`
when a cancel had been asked for (journaled as EFFECT_CANCEL_REQUESTED), after the runner killed
whatever of their processes is still alive. `pending` and `queued` effects are loaded to be run.
"""

from __future__ import annotations

import os
from pathlib import Path

from effectd.journal import Journal
from effectd.output import OutputLog
from effectd.runner import RecordedProcess, Runner
from effectd.supervisor import events
from effectd.supervisor.effect import CancelRequest, Effect
from effectd.supervisor.events import Outcome
from effectd.supervisor.registry import Registry


async def recover(journal: Journal, runner: Runner, registry: Registry) -> list[Effect]:
    """Ends the interrupted effects; returns the waiting ones, loaded into the registry, to be driven."""
    rows = await journal.active_effects()
    interrupted = [row for row in rows if row["status"] == "running"]
    await runner.kill_leftovers([RecordedProcess(r["effect_id"], r["pid"], r["pid_start"]) for r in interrupted])
    ended = []
    endings = []
    for row in interrupted:
        effect = Effect.from_row(row, registry.existing_output(row["effect_id"]))
        if row["cancel_reason"] is not None:  # a cancel asked for before the crash stands
            cancel = CancelRequest(row["cancel_reason"], row["cancel_message"], None)
            outcome = Outcome("cancelled", cancel=cancel)
        else:
            outcome = Outcome("failed", error="interrupted")
        ended.append(registry.adopt(effect))
        endings.append(events.ended(effect, outcome))
    if endings:
        for effect, event in zip(ended, await journal.try_append(*endings), strict=True):
            effect.apply(event)
            registry.add(effect)
    waiting = []
    for row in rows:
        if row["status"] != "running":
            effect = registry.adopt(Effect.from_row(row, registry.existing_output(row["effect_id"], closed=False)))
            registry.add(effect)
            waiting.append(effect)
    return waiting


async def cancel_waiting(journal: Journal, effect_id: str, message: str | None) -> bool:
    """Cancels a pending or queued effect of a journal no server runs; False when it is not waiting."""
    row = await journal.effect(effect_id)
    if row is None or row["status"] not in ("pending", "queued"):
        return False
    effect = Effect.from_row(row, OutputLog(Path(os.devnull), 0, closed=True))  # a waiting effect printed nothing
    outcome = Outcome("cancelled", cancel=CancelRequest("user", message, None))
    (stamped,) = await journal.try_append(events.ended(effect, outcome))
    effect.apply(stamped)
    return True
