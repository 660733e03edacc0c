"""How much a `for_each` fan-out grows the journal, against the bytes of its items.

Runs one flow whose step fans out over N items of SIZE bytes, each passed in its child's argv
(`{{item}}`), on a fresh journal; then prints the journal's size (file plus WAL) against the items'
bytes, and which events and columns hold them. Usage: `python -m benchmarks.bench_fanout_journal [N] [SIZE]`.
"""

from __future__ import annotations

import sqlite3
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import anyio
from mcp import Client

from effectd.app import build_server
from effectd.config.settings import build_settings
from effectd.engine.core import Engine


async def fan_out(db: Path, count: int, size: int) -> None:
    settings = replace(build_settings({}, db=db, allow_any_command=True), default_grace_s=0.5, result_grace_s=0.5)
    items = [f"{i:05d}" + "x" * (size - 5) for i in range(count)]
    step = {"id": "work", "for_each": items, "command": [sys.executable, "-c", "pass", "{{item}}"]}
    async with Engine.open(settings) as engine, Client(build_server(engine), read_timeout_seconds=600) as client:
        flow = await client.call_tool("dispatch_flow", {"steps": [step], "wait_s": 55, "max_concurrency": 8})
        record = flow.structured_content or {}
        while record.get("status") == "running":
            polled = await client.call_tool("poll_flow", {"flow_id": record["flow_id"], "wait_s": 55})
            record = polled.structured_content or {}


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    with tempfile.TemporaryDirectory() as scratch:
        db = Path(scratch) / "journal.db"
        anyio.run(fan_out, db, count, size)
        wal = Path(f"{db}-wal")
        total = db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
        print(
            f"{count} items x {size} B = {count * size} B; journal {total} B ({total / (count * size):.1f}x; "
            f"of it the WAL {total - db.stat().st_size} B)"
        )
        with sqlite3.connect(db) as conn:
            for kind, n, length in conn.execute(
                "SELECT type, COUNT(*), SUM(LENGTH(data)) FROM events GROUP BY type ORDER BY 3 DESC"
            ):
                print(f"  events {kind:<18} {n:>6} rows {length:>12} B")
            for column in ("spec", "command", "result"):
                (length,) = conn.execute(f"SELECT SUM(LENGTH({column})) FROM effects").fetchone()
                print(f"  effects.{column:<16} {'':>11} {length or 0:>12} B")


if __name__ == "__main__":
    main()
