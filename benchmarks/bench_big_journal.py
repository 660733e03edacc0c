"""A big journal (issue 26): `effectd serve` over real stdio on a journal of N finished effects, beside the same
on a journal of 1,000 effects in the same run (the baseline), the cases taking turns.

    .venv/bin/python benchmarks/make_journal.py --effects 1000000 --out /tmp/big.db    # once, ~5 min
    .venv/bin/python benchmarks/bench_big_journal.py --journal /tmp/big.db             # ~1 min
    .venv/bin/python benchmarks/bench_big_journal.py --effects 100000                  # makes its own journal

Each round copies neither journal: the server opens it as it is (the first open of a journal written by an
older effectd migrates it, once; run a round before you read the figures, or see `--runs`). Rows (medians of
the rounds; the calls 5 times each per round):
- `initialize`: from spawning `effectd serve --db J` to its answer (the start-up: the journal's check,
  migrations, recovery of leftovers, projection loads);
- `tools/list`: from spawn to its answer;
- `list_effects`: the default call (the newest 100, with the summary of every effect), then filtered by
  status (`failed`), by group, and by run;
- `poll_effect` of one effect (an old one, so it is read from the journal, not from memory);
- the journal's bytes per finished effect (the database file, WAL checkpointed, over its effects).

Nothing asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: the project is importable
    sys.path.insert(0, str(REPO))

from benchmarks.bench_startup import PROTOCOL  # noqa: E402
from benchmarks.bench_stdio import effectd_bin  # noqa: E402
from benchmarks.make_journal import generate  # noqa: E402

CALLS = 5


class Server:
    """`effectd serve` on stdio, spoken to in raw JSON-RPC lines (as bench_startup does)."""

    def __init__(self, db: Path, workdir: Path, binary: str) -> None:
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [binary, "serve", "--db", str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=workdir,
            env={**os.environ, "EFFECTD_NO_STARTUP_CACHE": "1"},  # the server's own start on this journal
        )
        self._next = 0

    def send(self, method: str, params: dict[str, Any] | None = None, *, notify: bool = False) -> int:
        assert self.proc.stdin is not None
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if not notify:
            self._next += 1
            message["id"] = self._next
        if params is not None:
            message["params"] = params
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        self.proc.stdin.flush()
        return self._next

    def answer(self, id_: int) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            message = json.loads(line)
            if message.get("id") == id_:
                if "error" in message or message.get("result", {}).get("isError"):
                    raise RuntimeError(f"effectd answered an error: {message}")
                return dict(message["result"])
        raise RuntimeError(f"effectd serve exited ({self.proc.wait()}) before answering request {id_}")

    def call(self, name: str, arguments: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        t = time.perf_counter()
        result = self.answer(self.send("tools/call", {"name": name, "arguments": arguments}))
        return time.perf_counter() - t, dict(result.get("structuredContent") or {})

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


def sample(db: Path) -> dict[str, str]:
    """A group, a run and an old effect of the journal, to filter and poll by."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        (group,) = conn.execute("SELECT MIN(group_name) FROM effects").fetchone()
        (run,) = conn.execute("SELECT MIN(run_id) FROM runs").fetchone()
        (effect,) = conn.execute("SELECT MIN(effect_id) FROM effects").fetchone()
    return {"group": group, "run": run, "effect": effect}


def round_of(db: Path, binary: str) -> dict[str, float]:
    """One start of the server on `db`: seconds to `initialize` and `tools/list`, then each call's median."""
    picked = sample(db)
    with tempfile.TemporaryDirectory() as workdir:
        server = Server(db, Path(workdir), binary)
        try:
            hello = {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}
            server.answer(server.send("initialize", hello))
            figures = {"initialize": time.perf_counter() - server.t0}
            server.send("notifications/initialized", notify=True)
            server.answer(server.send("tools/list", {}))
            figures["tools/list"] = time.perf_counter() - server.t0
            calls: dict[str, tuple[str, dict[str, Any]]] = {
                "list_effects (default)": ("list_effects", {}),
                "list_effects status=failed": ("list_effects", {"status": ["failed"]}),
                "list_effects group=G": ("list_effects", {"group": picked["group"]}),
                "list_effects run_id=R": ("list_effects", {"run_id": picked["run"]}),
                "poll_effect (an old one)": ("poll_effect", {"effect_id": picked["effect"]}),
            }
            for label, (tool, arguments) in calls.items():
                times = []
                for _ in range(CALLS):
                    took, result = server.call(tool, arguments)
                    times.append(took)
                if tool == "list_effects" and not result.get("effects"):
                    raise RuntimeError(f"{label} listed nothing: {result}")
                figures[label] = statistics.median(times)
        finally:
            server.close()
    return figures


def bytes_per_effect(db: Path) -> float:
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (count,) = conn.execute("SELECT COUNT(*) FROM effects").fetchone()
    return os.path.getsize(db) / max(count, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--journal", type=Path, help="a journal made by make_journal.py (else one is made)")
    parser.add_argument("--effects", type=int, default=1_000_000, help="effects of the journal made when none given")
    parser.add_argument("--baseline", type=int, default=1000, help="effects of the baseline journal")
    parser.add_argument("--runs", type=int, default=3, help="rounds (each starts the server on both journals)")
    parser.add_argument("--effectd", default=effectd_bin(), help="the effectd to run (another checkout's, say)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        small = Path(scratch) / "small.db"
        generate(small, args.baseline)
        big = args.journal
        if big is None:
            big = Path(scratch) / "big.db"
            generate(big, args.effects)
        rounds: dict[str, list[dict[str, float]]] = {"big": [], "small": []}
        for _ in range(args.runs):
            for name, db in (("big", big), ("small", small)):
                rounds[name].append(round_of(db, args.effectd))
        sizes = {"big": bytes_per_effect(big), "small": bytes_per_effect(small)}
        with sqlite3.connect(f"file:{big}?mode=ro", uri=True) as conn:
            (count,) = conn.execute("SELECT COUNT(*) FROM effects").fetchone()
    medians = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in rounds.items()}
    print(f"effectd serve over stdio, {args.runs} rounds (medians); {count:,} effects beside {args.baseline:,}\n")
    print(f"| what | {count:,} effects | {args.baseline:,} effects (same run) | ratio |")
    print("|---|---|---|---|")
    for key in medians["big"]:
        big_s, small_s = medians["big"][key], medians["small"][key]
        unit = (lambda s: f"{s:.2f} s") if key in ("initialize", "tools/list") else (lambda s: f"{s * 1000:.1f} ms")
        print(f"| {key} | {unit(big_s)} | {unit(small_s)} | {big_s / small_s:.2f}× |")
    print(f"| journal bytes per finished effect | {sizes['big']:,.0f} B | {sizes['small']:,.0f} B | |")
    if args.json:
        args.json.write_text(json.dumps({"medians": medians, "bytes_per_effect": sizes, "effects": count}, indent=2))


if __name__ == "__main__":
    main()
