"""What isolation costs: N effects that each write a file, dispatched at once on one git repository,
with `isolation: "worktree"` and without, through the engine API, in the same run.

    .venv/bin/python benchmarks/bench_isolation.py [--effects 20] [--rounds 2] [--single 20]

Prints the wall time from the first dispatch until every effect has ended (for isolation: its change
committed to its branch and its worktree removed), and the ratio. Then the latency of one isolated
effect alone, `--single` times: from the dispatch until its process started (the worktree made), and
from the process's exit until the record is terminal (the work committed, the worktree removed); the
medians. Never asserts a timing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Literal

import anyio

from effectd.config.settings import build_settings
from effectd.engine.core import Engine
from effectd.model.arguments import EffectRequest

WRITE = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text('x\\n')"


def scratch_repository(where: Path) -> Path:
    repo = where / "repo"
    repo.mkdir()
    for args in (
        ["init", "--quiet"],
        ["commit", "--quiet", "--allow-empty", "-m", "start"],
    ):
        env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost"}
        env.update(GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@localhost")
        subprocess.run(["git", *args], cwd=repo, check=True, env=env)
    return repo


async def one_round(effects: int, isolation: Literal["none", "worktree"]) -> float:
    with tempfile.TemporaryDirectory(prefix="effectd-bench-isolation-") as tmp:
        repo = scratch_repository(Path(tmp))
        settings = replace(
            build_settings({}, db=Path(tmp) / "journal.db", allow_any_command=True), max_concurrency=effects
        )
        async with Engine.open(settings) as engine:
            started = time.monotonic()
            ids = []
            for number in range(effects):
                request = EffectRequest(
                    command=[sys.executable, "-c", WRITE, f"file-{number}.txt"],
                    cwd=str(repo),
                    isolation=isolation,
                    group="bench",
                )
                ids.append((await engine.dispatch(request)).record.effect_id)
            for effect_id in ids:
                record = await engine.follow(effect_id, None)
                if record.status != "succeeded":
                    raise SystemExit(f"{effect_id} ended {record.status}: {record.error}")
            return time.monotonic() - started


async def single(times: int) -> tuple[float, float]:
    """Median start and finish latency (s) of one isolated effect at a time (see the module)."""
    starts, finishes = [], []
    with tempfile.TemporaryDirectory(prefix="effectd-bench-isolation-") as tmp:
        repo = scratch_repository(Path(tmp))
        settings = build_settings({}, db=Path(tmp) / "journal.db", allow_any_command=True)
        stamp = Path(tmp) / "exited"
        code = WRITE + "; import time; open(sys.argv[2], 'w').write(repr(time.time()))"
        async with Engine.open(settings) as engine:
            for number in range(times):
                request = EffectRequest(
                    command=[sys.executable, "-c", code, f"file-{number}.txt", str(stamp)],
                    cwd=str(repo),
                    isolation="worktree",
                )
                dispatched = time.time()
                record = await engine.follow((await engine.dispatch(request)).record.effect_id, None)
                ended = time.time()
                if record.status != "succeeded" or record.started_at is None:
                    raise SystemExit(f"{record.effect_id} ended {record.status}: {record.error}")
                started = datetime.fromisoformat(record.started_at.replace("Z", "+00:00")).timestamp()
                starts.append(started - dispatched)
                finishes.append(ended - float(stamp.read_text()))
    return statistics.median(starts), statistics.median(finishes)


async def main(effects: int, rounds: int, times: int) -> None:
    print(f"{effects} effects at once on one repository, {rounds} rounds each; load average {os.getloadavg()[0]:.1f}")
    best: dict[str, float] = {}
    kinds: tuple[Literal["none", "worktree"], ...] = ("none", "worktree")
    for _ in range(rounds):
        for isolation in kinds:
            took = await one_round(effects, isolation)
            print(f"  isolation {isolation!r:<11} {took:6.2f} s")
            best[isolation] = min(best.get(isolation, took), took)
    print(
        f"best: none {best['none']:.2f} s, worktree {best['worktree']:.2f} s, "
        f"ratio {best['worktree'] / best['none']:.1f}x; load average {os.getloadavg()[0]:.1f}"
    )
    if times:
        start, finish = await single(times)
        print(
            f"one isolated effect at a time ({times}), medians: dispatch to process start {start * 1000:.0f} ms, "
            f"process exit to terminal record {finish * 1000:.0f} ms; load average {os.getloadavg()[0]:.1f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--effects", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--single", type=int, default=20, help="one effect at a time, this many times (0: none)")
    options = parser.parse_args()
    anyio.run(main, options.effects, options.rounds, options.single)
