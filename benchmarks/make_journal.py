"""A journal of N finished effects (issue 26), for `bench_big_journal.py` and for trying a big history by hand.

    .venv/bin/python benchmarks/make_journal.py --effects 1000000 --out /tmp/big.db   # ~5 min on 2 cores
    .venv/bin/python benchmarks/make_journal.py --effects 1000 --out /tmp/small.db

The journal is written as the engine writes it: first the real engine (effectd's own migrations, the
local runner) runs a few template effects on it (`true` in a group, `false` in a group, `sh -c 'echo
hi'` with a label), so its schema, its `servers` row and the shape of every row and event are the
engine's own. Then those templates are copied N times in bulk, one transaction per batch of
`--batch` effects: each copy gets its own time-sortable id (as `new_id` makes them, a millisecond apart,
in the past), its run (one per 1,000 effects, with its RUN_CREATED), its group (one per 100 effects),
its own timestamps and `seq`s, and its three events (EFFECT_REQUESTED, EFFECT_STARTED, then
EFFECT_RESOLVED or EFFECT_FAILED), the projection row folded to the same values the engine's fold
gives. Every effect is finished; the server that ran them has stopped.

`--leftovers K` leaves the K newest effects `running` (as a server killed mid-run leaves them: no
terminal event), for a recovery to end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: the project is importable
    sys.path.insert(0, str(REPO))

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
EFFECTS_PER_RUN = 1000
EFFECTS_PER_GROUP = 100


def make_id(prefix: str, ms: int, rand: int) -> str:
    """An id as `effectd.model.records.new_id` makes it, at the millisecond `ms`."""
    value = (ms << 80) | (rand & ((1 << 80) - 1))
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return prefix + "".join(reversed(chars))


def iso(ms: int, us: int = 0) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC) + timedelta(microseconds=us)
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def write_templates(db: Path) -> None:
    """Runs the template effects through the real engine on the journal at `db`."""
    import anyio

    from effectd.api import EffectFailedError, run_effect
    from effectd.config.settings import build_settings
    from effectd.engine.core import Engine

    settings = build_settings({}, db=db, allow_commands=["true", "false", "sh"])

    async def main() -> None:
        async with Engine.open(settings) as engine:
            await run_effect(engine, command=["true"], group="template")
            try:
                await run_effect(engine, command=["false"], group="template")
            except EffectFailedError:
                pass
            await run_effect(engine, command=["sh", "-c", "echo hi"], label="template")

    anyio.run(main)
    shutil.rmtree(settings.output_dir, ignore_errors=True)  # the copies' output is not on disk (as if pruned)


def _templates(conn: sqlite3.Connection) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    conn.row_factory = sqlite3.Row
    shapes = []
    for row in conn.execute("SELECT * FROM effects ORDER BY effect_id"):
        events = [
            dict(event)
            for event in conn.execute("SELECT * FROM events WHERE effect_id = ? ORDER BY seq", (row["effect_id"],))
        ]
        for event in events:
            event["data"] = json.loads(event["data"])
        shapes.append((dict(row), events))
    conn.row_factory = None
    return shapes


def _with_group(spec: dict[str, Any], group: str | None) -> dict[str, Any]:
    """The spec with this group (none: no `group` key, as the engine journals a field at its default)."""
    return {**spec, "group": group} if group is not None else {k: v for k, v in spec.items() if k != "group"}


def generate(out: Path, effects: int, *, batch: int = 20_000, leftovers: int = 0, seed: int = 26) -> None:
    """Writes a journal of `effects` finished effects (the `leftovers` newest ones left running) at `out`."""
    for name in (out, Path(f"{out}-wal"), Path(f"{out}-shm")):
        name.unlink(missing_ok=True)
    write_templates(out)
    rng = random.Random(seed)
    conn = sqlite3.connect(out, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    shapes = _templates(conn)
    conn.execute("BEGIN")
    conn.execute("DELETE FROM events")
    conn.execute("DELETE FROM effects")
    conn.execute("DELETE FROM runs")
    conn.execute("COMMIT")
    columns = list(shapes[0][0])
    insert_effect = f"INSERT INTO effects ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    insert_event = "INSERT INTO events (seq, ts, run_id, effect_id, type, data) VALUES (?, ?, ?, ?, ?, ?)"
    start_ms = int(time.time() * 1000) - effects * 3 - 60_000  # each effect 3 ms apart, all in the past
    seq = 0
    run_id = ""
    done = 0
    while done < effects:
        rows: list[tuple[Any, ...]] = []
        events: list[tuple[Any, ...]] = []
        runs: list[tuple[str, str]] = []
        for i in range(done, min(done + batch, effects)):
            ms = start_ms + i * 3
            if i % EFFECTS_PER_RUN == 0:
                run_id = make_id("run_", ms, rng.getrandbits(80))
                seq += 1
                runs.append((run_id, iso(ms)))
                events.append((seq, iso(ms, 30), run_id, None, "RUN_CREATED", json.dumps({"created_at": iso(ms)})))
            row, template_events = shapes[i % len(shapes)]
            effect_id = make_id("eff_", ms, rng.getrandbits(80))
            group = f"batch-{i // EFFECTS_PER_GROUP:06d}" if row["group_name"] is not None else None
            stamps = {"created_at": iso(ms, 10), "started_at": iso(ms, 900), "finished_at": iso(ms, 1900)}
            pid = 1000 + i % 30000
            running = i >= effects - leftovers
            seqs = []
            for event in template_events[: 2 if running else 3]:
                data = dict(event["data"])
                if event["type"] == "EFFECT_REQUESTED":
                    data["spec"] = _with_group(data["spec"], group)
                    data["created_at"] = stamps["created_at"]
                elif event["type"] == "EFFECT_STARTED":
                    data.update(started_at=stamps["started_at"], pid=pid, pid_start=pid * 7)
                else:
                    data["finished_at"] = stamps["finished_at"]
                seq += 1
                seqs.append(seq)
                stamp = ("finished_at", "started_at", "created_at")
                ts = next((data[k] for k in stamp if k in data), stamps["created_at"])
                events.append((seq, ts, run_id, effect_id, event["type"], json.dumps(data, separators=(",", ":"))))
            spec = _with_group(json.loads(row["spec"]), group)
            values = dict(
                row,
                effect_id=effect_id,
                run_id=run_id,
                group_name=group,
                spec=json.dumps(spec, separators=(",", ":")),
                created_at=stamps["created_at"],
                started_at=stamps["started_at"],
                pid_start=pid * 7,
            )
            if running:
                values.update(
                    status="running", pid=pid, finished_at=None, terminal_seq=None, exit_code=None, error=None
                )
                values.update(output_bytes=0)
            else:
                values.update(finished_at=stamps["finished_at"], terminal_seq=seqs[-1])
            rows.append(tuple(values[c] for c in columns))
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO runs (run_id, created_at) VALUES (?, ?)", runs)
        conn.executemany(insert_event, events)
        conn.executemany(insert_effect, rows)
        conn.execute("COMMIT")
        done += len(rows)
        print(f"\r{done}/{effects} effects", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    conn.execute("PRAGMA optimize")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--effects", type=int, default=1_000_000, help="finished effects (default 1,000,000)")
    parser.add_argument("--out", type=Path, required=True, help="the journal to write (replaced if it exists)")
    parser.add_argument("--batch", type=int, default=20_000, help="effects per transaction")
    parser.add_argument("--leftovers", type=int, default=0, help="the newest K effects left running")
    args = parser.parse_args()
    t0 = time.perf_counter()
    generate(args.out, args.effects, batch=args.batch, leftovers=args.leftovers)
    size = os.path.getsize(args.out)
    print(
        f"{args.effects} effects in {time.perf_counter() - t0:.1f} s: {args.out}, {size / 1e6:.1f} MB, "
        f"{size / max(args.effects, 1):.0f} B per effect"
    )


if __name__ == "__main__":
    main()
