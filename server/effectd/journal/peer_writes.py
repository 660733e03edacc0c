"""What the journal's writer does so that several servers can write one journal.

Each server has one writer connection. A batch opens its transaction with `BEGIN IMMEDIATE`, which
waits (up to the busy timeout) while another server's batch holds the write lock, and only then
takes its `seq` numbers from the journal itself: seqs stay gap-free and in commit order whoever
writes. What another server wrote since this one's last batch is dropped from the writer's cache of
effect states, and an idempotency key some server took meanwhile is refused to the one dispatch
that reused it, inside the same transaction, while the rest of the batch is written.
"""

from __future__ import annotations

from collections.abc import Sequence

import aiosqlite

from effectd.journal.projection import Event


class KeyTakenError(Exception):
    """Raised to a dispatch whose idempotency key already names another effect of its run (one this
    server or another one journaled first); carries that effect's id."""

    def __init__(self, run_id: str, key: str, effect_id: str) -> None:
        super().__init__(f"key {key!r} of run {run_id!r} already names effect {effect_id}")
        self.run_id, self.key, self.effect_id = run_id, key, effect_id


async def begin_batch(db: aiosqlite.Connection, last_seq: int) -> tuple[int, set[str], set[str]]:
    """Opens the batch's write transaction (waiting politely for another writer's to end). Returns the
    journal's last seq, and the effects and flows that other writers changed after `last_seq`."""
    await db.execute("BEGIN IMMEDIATE")
    rows = await db.execute_fetchall("SELECT COALESCE(MAX(seq), 0) FROM events")
    head = int(next(iter(rows))[0])
    if head == last_seq:
        return head, set(), set()
    changed = await db.execute_fetchall(
        "SELECT DISTINCT effect_id, CASE WHEN type LIKE 'FLOW_%' THEN json_extract(data, '$.flow_id') END "
        "FROM events WHERE seq > ?",
        (last_seq,),
    )
    effects = {row[0] for row in changed if row[0] is not None}
    flows = {row[1] for row in changed if row[1] is not None}
    return head, effects, flows


async def screen(
    db: aiosqlite.Connection, batches: Sequence[list[Event]]
) -> list[tuple[list[Event], Exception | None]]:
    """Each caller's events as they may be written now, inside the batch's transaction: a RUN_CREATED
    of a run that exists (another server created it) is left out, and a caller whose EFFECT_REQUESTED
    names a key its run already has gets a KeyTakenError instead (nothing of it is written)."""
    screened: list[tuple[list[Event], Exception | None]] = []
    taken: dict[tuple[str, str], str] = {}
    runs: set[str] = set()
    for events in batches:
        kept: list[Event] = []
        error: Exception | None = None
        for event in events:
            if event.type == "RUN_CREATED" and event.run_id:
                if event.run_id in runs or await _exists(db, "SELECT 1 FROM runs WHERE run_id = ?", event.run_id):
                    continue
            elif event.type == "EFFECT_REQUESTED" and event.run_id and event.data["spec"].get("key") is not None:
                key = str(event.data["spec"]["key"])
                owner = taken.get((event.run_id, key)) or await _key_owner(db, event.run_id, key)
                if owner is not None and owner != event.effect_id:
                    error = KeyTakenError(event.run_id, key, owner)
                    break
                taken[(event.run_id, key)] = event.effect_id or ""
            kept.append(event)
        if error is None:
            runs.update(e.run_id for e in kept if e.type == "RUN_CREATED" and e.run_id)
            screened.append((kept, None))
        else:
            for event in kept:  # keys this caller claimed earlier in its own events are free again
                if event.type == "EFFECT_REQUESTED" and event.run_id:
                    key = event.data["spec"].get("key")
                    if key is not None and taken.get((event.run_id, str(key))) == event.effect_id:
                        del taken[(event.run_id, str(key))]
            screened.append(([], error))
    return screened


async def _exists(db: aiosqlite.Connection, sql: str, *params: object) -> bool:
    return bool(await db.execute_fetchall(sql, params))


async def _key_owner(db: aiosqlite.Connection, run_id: str, key: str) -> str | None:
    rows = await db.execute_fetchall("SELECT effect_id FROM effects WHERE run_id = ? AND key = ?", (run_id, key))
    return str(next(iter(rows))[0]) if rows else None
