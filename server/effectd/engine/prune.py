"""`effectd prune --older-than DURATION [--journal]`: retention, the one way the journal forgets.

For every effect that ended before the cutoff (never a running or waiting one, nor a step of a flow
still running), the output log and result file are removed and an EFFECT_OUTPUT_PRUNED event is
journaled: folded by `EffectState.apply`, it makes the record say `output_bytes` 0 and
`output_pruned: true`. With `--journal`, those effects (and the flows that finished before the cutoff,
with their steps) then leave the journal: their events and rows are removed, a JOURNAL_PRUNED event
records it (so `seq` keeps growing), and the file is compacted (VACUUM).

A live server does this itself, asked through the control table (its effects in memory follow);
with none, `effectd prune` does it under the journal's lock (`prune_offline`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio

from effectd.errors import ConfigError
from effectd.journal.projection import JOURNAL_PRUNED, OUTPUT_PRUNED, Event
from effectd.journal.prune import active_count, compact, ended_before, forget, forgettable
from effectd.journal.store import Journal
from effectd.model.records import format_iso, now_iso
from effectd.supervisor.registry import Registry

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_CHUNK = 500


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `90m`, `45s`, `2w` or plain seconds (`3600`); ConfigError names what is allowed."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if match is None:
        raise ConfigError(
            f"--older-than {text!r} is not a duration: give a number with a unit s, m, h, d or w (e.g. 30d, 12h)"
        )
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2) or "s"])


def cutoff(older_than: timedelta, now: datetime | None = None) -> str:
    """The moment (ISO, UTC) before which an effect must have ended to be pruned."""
    return format_iso((now or datetime.now(UTC)) - older_than)


def _ignore(_: Any) -> None:
    return None


def _remove_files(output_dir: Path, effect_ids: Sequence[str]) -> tuple[int, int]:
    """Removes the output logs and result files (links themselves, never what they point to)."""
    removed = freed = 0
    for effect_id in effect_ids:
        for name in (f"{effect_id}.log", f"{effect_id}.result.json"):
            path = output_dir / name
            try:
                size = path.lstat().st_size
                os.unlink(path)
            except FileNotFoundError:
                continue
            removed += 1
            freed += size
    return removed, freed


def journal_bytes(db: Path) -> int:
    """The size of the journal on disk: the database and its write-ahead log."""
    total = 0
    for path in (db, db.with_name(db.name + "-wal")):
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            pass
    return total


async def prune(
    journal: Journal,
    output_dir: Path,
    before: str,
    *,
    forget_journal: bool = False,
    applied: Callable[[Event], None] = _ignore,
    forgotten: Callable[[list[str]], None] = _ignore,
) -> dict[str, Any]:
    """Prunes what ended before `before` (see the module); `applied` sees each committed
    EFFECT_OUTPUT_PRUNED event, `forgotten` the ids of the effects that left the journal. Returns the report."""
    rows = await ended_before(journal, before)
    fresh = [row for row in rows if not row["output_pruned"]]
    pruned_at = now_iso()
    for start in range(0, len(fresh), _CHUNK):
        events = [
            Event(OUTPUT_PRUNED, row["run_id"], row["effect_id"], {"pruned_at": pruned_at})
            for row in fresh[start : start + _CHUNK]
        ]
        for event in await journal.append(*events):
            applied(event)
    # After the events are durable: a crash in between leaves files a second prune removes.
    files, freed = await anyio.to_thread.run_sync(_remove_files, output_dir, [row["effect_id"] for row in rows])
    report: dict[str, Any] = {
        "before": before,
        "effects_pruned": len(fresh),
        "files_removed": files,
        "bytes_freed": freed,
        "active_left_alone": await active_count(journal),
    }
    if forget_journal:
        size = journal_bytes(journal.path)
        effect_ids, flow_ids = await forgettable(journal, before)
        if effect_ids or flow_ids:
            await forget(journal, effect_ids, flow_ids)
            forgotten(effect_ids)
            await journal.append(
                Event(
                    JOURNAL_PRUNED, None, None, {"before": before, "effects": len(effect_ids), "flows": len(flow_ids)}
                )
            )
        await compact(journal)
        report.update(
            effects_forgotten=len(effect_ids),
            flows_forgotten=len(flow_ids),
            journal_bytes_before=size,
            journal_bytes_after=journal_bytes(journal.path),
        )
    return report


async def prune_live(
    journal: Journal, output_dir: Path, registry: Registry, before: str, forget_journal: bool
) -> dict[str, Any]:
    """`prune` by the live server: its effects in memory apply the events and forget what left the journal."""

    def applied(event: Event) -> None:
        effect = registry.loaded(event.effect_id or "")
        if effect is not None:
            effect.apply(event)

    return await prune(
        journal, output_dir, before, forget_journal=forget_journal, applied=applied, forgotten=registry.drop
    )


async def prune_offline(db: Path, output_dir: Path, before: str, *, forget_journal: bool) -> dict[str, Any]:
    """`effectd prune` with no live server: holds the journal's start-up lock meanwhile, so no server
    starts on it. Raises DatabaseBusyError when a server runs on the journal (ask it instead)."""
    from effectd.errors import DatabaseBusyError
    from effectd.journal.peers import Peers
    from effectd.peers.ownership import StartLock, server_alive

    lock = StartLock(db)
    await lock.acquire()
    try:
        async with Journal.open(db) as journal, Peers.open(db) as peers:
            if any(server_alive(row, db) for row in await peers.servers()):
                raise DatabaseBusyError("a live effectd server runs on the journal")
            return await prune(journal, output_dir, before, forget_journal=forget_journal)
    finally:
        lock.release()
