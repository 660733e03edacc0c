"""What isolation costs: N effects that each write a file, dispatched at once on one git repository,
with `isolation: "worktree"` and without, through the engine API, in the same run. A third variant,
"worktree, unheld", skips marking the repository's objects precious while its effects run (the
`git gc --prune=now` guard of effectd.runner.git), to show what that guard costs.

    .venv/bin/python benchmarks/bench_isolation.py [--effects 20] [--rounds 2]

Prints the wall time from the first dispatch until every effect has ended (for isolation: its change
committed to its branch and its worktree removed), and the ratio. Never asserts a timing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Literal

import anyio

import effectd.runner.git as git_module
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


async def _unheld(repo: object, effect_id: str) -> None:
    """The guard's hold and release, skipped: the baseline that shows what the guard costs."""


async def unheld_round(effects: int) -> float:
    hold, release = git_module._hold_objects, git_module._release_objects
    git_module._hold_objects = git_module._release_objects = _unheld  # type: ignore[assignment]
    try:
        return await one_round(effects, "worktree")
    finally:
        git_module._hold_objects, git_module._release_objects = hold, release  # type: ignore[method-assign]


async def main(effects: int, rounds: int) -> None:
    print(f"{effects} effects at once on one repository, {rounds} rounds each; load average {os.getloadavg()[0]:.1f}")
    best: dict[str, float] = {}
    kinds: tuple[Literal["none", "worktree"], ...] = ("none", "worktree")
    for _ in range(rounds):
        for isolation in kinds:
            took = await one_round(effects, isolation)
            print(f"  isolation {isolation!r:<11} {took:6.2f} s")
            best[isolation] = min(best.get(isolation, took), took)
        took = await unheld_round(effects)
        print(f"  isolation 'worktree', unheld {took:6.2f} s")
        best["unheld"] = min(best.get("unheld", took), took)
    print(
        f"best: none {best['none']:.2f} s, worktree {best['worktree']:.2f} s, "
        f"ratio {best['worktree'] / best['none']:.1f}x; worktree without the gc guard {best['unheld']:.2f} s "
        f"(the guard: {(best['worktree'] - best['unheld']) / effects * 1000:+.1f} ms an effect); "
        f"load average {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--effects", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    options = parser.parse_args()
    anyio.run(main, options.effects, options.rounds)
