"""Named, ordered schema migrations, each applied once and recorded in `_migrations`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiosqlite

Migration = Callable[[aiosqlite.Connection], Awaitable[None]]

MIGRATIONS: list[tuple[str, Migration]] = []


def migration(name: str) -> Callable[[Migration], Migration]:
    def register(fn: Migration) -> Migration:
        MIGRATIONS.append((name, fn))
        return fn

    return register


@migration("m001_events_and_projection")
async def _events_and_projection(db: aiosqlite.Connection) -> None:
    await db.executescript(
        """
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY,
            ts TEXT NOT NULL,
            run_id TEXT,
            effect_id TEXT,
            type TEXT NOT NULL,
            data TEXT NOT NULL
        );
        CREATE INDEX events_by_effect ON events (effect_id, seq);
        CREATE INDEX events_by_run ON events (run_id, seq);

        CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            created_at TEXT NOT NULL
        );

        CREATE TABLE effects (
            effect_id TEXT PRIMARY KEY,
            run_id TEXT NOT NULL,
            group_name TEXT,
            label TEXT,
            key TEXT,
            kind TEXT NOT NULL,
            harness TEXT,
            command TEXT NOT NULL,
            spec TEXT NOT NULL,
            status TEXT NOT NULL,
            cancel_reason TEXT,
            cancel_message TEXT,
            error TEXT,
            exit_code INTEGER,
            signal INTEGER,
            created_at TEXT NOT NULL,
            started_at TEXT,
            finished_at TEXT,
            result TEXT,
            output_bytes INTEGER NOT NULL DEFAULT 0,
            output_truncated INTEGER NOT NULL DEFAULT 0,
            depends_on TEXT NOT NULL,
            pid INTEGER,
            pid_start INTEGER,
            attempt INTEGER NOT NULL DEFAULT 0,
            progress TEXT,
            terminal_seq INTEGER,
            flow_id TEXT,
            step_id TEXT
        );
        CREATE INDEX effects_by_run ON effects (run_id, effect_id);
        CREATE INDEX effects_by_group ON effects (group_name, effect_id);
        CREATE INDEX effects_by_status ON effects (status);
        CREATE UNIQUE INDEX effects_by_key ON effects (run_id, key) WHERE key IS NOT NULL;

        CREATE TABLE flows (
            flow_id TEXT PRIMARY KEY,
            run_id TEXT NOT NULL,
            policy TEXT NOT NULL,
            max_concurrency INTEGER,
            steps TEXT NOT NULL,
            status TEXT NOT NULL,
            started_at TEXT NOT NULL,
            finished_at TEXT
        );

        -- Requests from other processes (`effectd cancel`) to the live server; not part of the projection.
        CREATE TABLE control (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            effect_id TEXT NOT NULL,
            action TEXT NOT NULL,
            reason TEXT,
            requested_at TEXT NOT NULL,
            answered_at TEXT,
            answer TEXT
        );
        """
    )


async def migrate(db: aiosqlite.Connection) -> list[str]:
    """Applies every migration not yet recorded; returns the names applied now."""
    await db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    done = {row[0] for row in await db.execute_fetchall("SELECT name FROM _migrations")}
    applied = []
    for name, step in MIGRATIONS:
        if name in done:
            continue
        await step(db)
        await db.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, datetime('now'))", (name,))
        await db.commit()
        applied.append(name)
    return applied


@migration("m120_issue12b_budgets")
async def _budgets(db: aiosqlite.Connection) -> None:
    """The budgets of runs and groups (a projection of BUDGET_SET and BUDGET_EXCEEDED)."""
    await db.executescript(
        """
        CREATE TABLE budgets (
            kind TEXT NOT NULL,
            name TEXT NOT NULL,
            run_id TEXT,
            max_cost_usd REAL,
            max_tokens INTEGER,
            set_at TEXT NOT NULL,
            exceeded_at TEXT,
            spent_cost_usd REAL,
            spent_tokens INTEGER,
            PRIMARY KEY (kind, name)
        );
        """
    )


@migration("m160_issue16_node")
async def _node(db: aiosqlite.Connection) -> None:
    """Where each effect's process ran (EFFECT_STARTED's `node`)."""
    await db.execute("ALTER TABLE effects ADD COLUMN node TEXT")
