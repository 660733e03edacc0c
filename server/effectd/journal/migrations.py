"""Named, ordered schema migrations, each applied once and recorded in `_migrations`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiosqlite

from effectd.errors import JournalUnusableError

Migration = Callable[[aiosqlite.Connection], Awaitable[None]]

MIGRATIONS: list[tuple[str, Migration]] = []


def migration(name: str) -> Callable[[Migration], Migration]:
    def register(fn: Migration) -> Migration:
        MIGRATIONS.append((name, fn))
        MIGRATIONS.sort(key=lambda entry: entry[0])  # applied in the order of their names
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


@migration("m112_issue12a_workspace")
async def _workspace(db: aiosqlite.Connection) -> None:
    """Isolation: the effect's git worktree, as JSON (null for an effect without one)."""
    await db.execute("ALTER TABLE effects ADD COLUMN workspace TEXT")


async def migrate(db: aiosqlite.Connection) -> list[str]:
    """Applies every migration not yet recorded; returns the names applied now."""
    await db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    done = {row[0] for row in await db.execute_fetchall("SELECT name FROM _migrations")}
    unknown = sorted(done - {name for name, _ in MIGRATIONS})
    if unknown:  # a newer effectd's journal: its tables mean what this effectd does not know
        raise JournalUnusableError(
            f"it was written by a newer effectd (schema migration {unknown[-1]!r} is unknown to this one)"
        )
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


@migration("m110_issue11_sessions")
async def _sessions(db: aiosqlite.Connection) -> None:
    """Several servers on one journal: who they are, who owns each effect and flow, and who took over
    the effects of a server that is gone (`adopted_by`). The row `''` stands for the servers that ran
    before sessions existed (effects with no owner): always gone."""
    await db.executescript(
        """
        CREATE TABLE servers (
            server_id TEXT PRIMARY KEY,
            pid INTEGER,
            pid_start INTEGER,
            host TEXT,
            started_at TEXT NOT NULL,
            stopped_at TEXT,
            adopted_by TEXT
        );
        INSERT INTO servers (server_id, started_at) VALUES ('', datetime('now'));
        ALTER TABLE effects ADD COLUMN owner TEXT;
        ALTER TABLE flows ADD COLUMN owner TEXT;
        CREATE INDEX effects_by_owner ON effects (owner, status);
        ALTER TABLE control ADD COLUMN grace_s REAL;
        """
    )


@migration("m110_issue10d_control_expiry_and_pruning")
async def _control_expiry_and_pruning(db: aiosqlite.Connection) -> None:
    await db.executescript(
        """
        -- A control request is carried out only within its window (`effectd cancel` waits 10 s): past
        -- `expires_at` it is answered `expired` and never acted on. `args` and `result` (JSON) carry an
        -- `effectd prune` request and its outcome. Requests from before this migration are expired.
        ALTER TABLE control ADD COLUMN expires_at TEXT;
        ALTER TABLE control ADD COLUMN args TEXT;
        ALTER TABLE control ADD COLUMN result TEXT;
        UPDATE control SET answered_at = datetime('now'), answer = 'expired' WHERE answered_at IS NULL;

        -- `effectd prune` removed the effect's output log and result file (EFFECT_OUTPUT_PRUNED).
        ALTER TABLE effects ADD COLUMN output_pruned INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX effects_by_finish ON effects (finished_at);
        """
    )


@migration("m110_issue10a_result_error")
async def _result_error(db: aiosqlite.Connection) -> None:
    """Why a result file that was there was not read (record field `result_error`)."""
    await db.execute("ALTER TABLE effects ADD COLUMN result_error TEXT")


@migration("m150_issue15_resume")
async def _resume(db: aiosqlite.Connection) -> None:
    """Resume: a cached flow step and the effect it was taken from; the flow a flow resumed."""
    await db.execute("ALTER TABLE effects ADD COLUMN cached INTEGER NOT NULL DEFAULT 0")
    await db.execute("ALTER TABLE effects ADD COLUMN reused_from TEXT")
    await db.execute("ALTER TABLE flows ADD COLUMN resumed_from TEXT")


@migration("m160_issue16_node")
async def _node(db: aiosqlite.Connection) -> None:
    """Where each effect's process ran (EFFECT_STARTED's `node`)."""
    await db.execute("ALTER TABLE effects ADD COLUMN node TEXT")


@migration("m230_issue23_peak_memory")
async def _peak_memory(db: aiosqlite.Connection) -> None:
    """An effect's peak memory, as its cgroup reported it (the terminal event's `peak_memory_mb`)."""
    await db.execute("ALTER TABLE effects ADD COLUMN peak_memory_mb REAL")


@migration("m240_issue24_command_null")
async def _command_null(db: aiosqlite.Connection) -> None:
    """`effects.command` is JSON null when the effect ran the argv its spec holds (a fan-out stored each
    argv twice). Older rows are folded the same way; an older effectd, which would read null as an argv,
    refuses the journal from now on, as for any migration it does not know."""
    await db.execute("UPDATE effects SET command = 'null' WHERE json(command) = json_extract(spec, '$.command')")


def _spend(row: str) -> tuple[str, str, str]:
    """The cost and tokens one effect row (`new` or `old`) adds to the summary of `list_effects`: what
    `effectd.journal.summaries` sums, per row (0 for anything but a harness effect's sane figures)."""
    from effectd.harness.usage import MAX_RUN_COST_USD, MAX_RUN_TOKENS

    def part(path: str, cast: str, bound: float) -> str:
        value = f"CAST(json_extract({row}.result, '{path}') AS {cast})"
        return (
            f"(CASE WHEN {row}.kind = 'harness' AND json_valid({row}.result) AND {value} BETWEEN 0 AND {bound} "
            f"THEN {value} ELSE 0 END)"
        )

    return (
        part("$.cost_usd", "REAL", MAX_RUN_COST_USD),
        part("$.usage.input_tokens", "INTEGER", MAX_RUN_TOKENS),
        part("$.usage.output_tokens", "INTEGER", MAX_RUN_TOKENS),
    )


def _count_in(row: str) -> str:
    """Adds the effect `row` to its run's and group's counts, and to the totals (run and group `''`)."""
    cost, tokens_in, tokens_out = _spend(row)
    statements = []
    for run, group in ((f"{row}.run_id", f"COALESCE({row}.group_name, '')"), ("''", "''")):
        statements.append(
            "INSERT INTO effect_counts (run_id, grp, status, n, cost_usd, input_tokens, output_tokens) "
            f"VALUES ({run}, {group}, {row}.status, 1, {cost}, {tokens_in}, {tokens_out}) "
            "ON CONFLICT (run_id, grp, status) DO UPDATE SET n = n + 1, cost_usd = cost_usd + excluded.cost_usd, "
            "input_tokens = input_tokens + excluded.input_tokens, "
            "output_tokens = output_tokens + excluded.output_tokens;"
        )
    return " ".join(statements)


def _count_out(row: str) -> str:
    """Takes the effect `row` out of the counts `_count_in` added it to (a count that falls to 0 goes)."""
    cost, tokens_in, tokens_out = _spend(row)
    statements = []
    for run, group in ((f"{row}.run_id", f"COALESCE({row}.group_name, '')"), ("''", "''")):
        key = f"run_id = {run} AND grp = {group} AND status = {row}.status"
        statements.append(
            f"UPDATE effect_counts SET n = n - 1, cost_usd = cost_usd - {cost}, "
            f"input_tokens = input_tokens - {tokens_in}, output_tokens = output_tokens - {tokens_out} WHERE {key}; "
            f"DELETE FROM effect_counts WHERE {key} AND n <= 0;"
        )
    return " ".join(statements)


@migration("m260_issue26_scale")
async def _scale(db: aiosqlite.Connection) -> None:
    """A journal of a million effects (issue 26): what start-up and `list_effects` read is indexed, and the
    summary `list_effects` gives is read from counts the triggers keep, not summed over every effect.

    - `effects_by_status` becomes `(status, effect_id)`: the live effects at start, and one status's newest
      effects, read in the index's order (no sort of the history); `effects_live` holds only the effects not
      yet ended, what a start reads.
    - `effect_counts`: per run, group (`''` for none) and status, how many effects there are and the cost
      and tokens their results report, and the same over every effect (run and group `''`: no run id or
      group name is empty), kept by triggers on `effects` through every insert, update and
      delete (`effectd prune`); filled here from the effects already there.
    - `flows_unfinished`: the flows a start loads, without a scan of every flow; `events_approvals`: the
      approval events a start folds, without a scan of every event.
    - ANALYZE (bounded by `analysis_limit`), so that the planner knows a status from a group.
    """
    changed = "old.status IS NOT new.status OR old.run_id IS NOT new.run_id OR old.group_name IS NOT new.group_name"
    changed += " OR old.kind IS NOT new.kind OR old.result IS NOT new.result"
    cost, tokens_in, tokens_out = _spend("effects")
    await db.executescript(
        f"""
        DROP INDEX IF EXISTS effects_by_status;
        CREATE INDEX effects_by_status ON effects (status, effect_id);
        CREATE TABLE effect_counts (
            run_id TEXT NOT NULL,
            grp TEXT NOT NULL,
            status TEXT NOT NULL,
            n INTEGER NOT NULL,
            cost_usd REAL NOT NULL,
            input_tokens INTEGER NOT NULL,
            output_tokens INTEGER NOT NULL,
            PRIMARY KEY (run_id, grp, status)
        ) WITHOUT ROWID;
        CREATE INDEX effects_live ON effects (effect_id) WHERE status IN ('pending', 'queued', 'running');
        CREATE INDEX effect_counts_by_group ON effect_counts (grp, status);
        CREATE INDEX flows_unfinished ON flows (flow_id) WHERE finished_at IS NULL;
        CREATE INDEX events_approvals ON events (seq) WHERE type IN ('APPROVAL_REQUESTED', 'APPROVAL_ANSWERED');
        INSERT INTO effect_counts (run_id, grp, status, n, cost_usd, input_tokens, output_tokens)
            SELECT run_id, COALESCE(group_name, ''), status, COUNT(*), TOTAL({cost}), SUM({tokens_in}),
                SUM({tokens_out})
            FROM effects GROUP BY run_id, COALESCE(group_name, ''), status;
        INSERT INTO effect_counts (run_id, grp, status, n, cost_usd, input_tokens, output_tokens)
            SELECT '', '', status, SUM(n), TOTAL(cost_usd), SUM(input_tokens), SUM(output_tokens)
            FROM effect_counts GROUP BY status;
        CREATE TRIGGER effect_counts_insert AFTER INSERT ON effects BEGIN {_count_in("new")} END;
        CREATE TRIGGER effect_counts_delete AFTER DELETE ON effects BEGIN {_count_out("old")} END;
        CREATE TRIGGER effect_counts_update AFTER UPDATE ON effects WHEN {changed}
            BEGIN {_count_out("old")} {_count_in("new")} END;
        PRAGMA analysis_limit = 1000;
        ANALYZE;
        """
    )
