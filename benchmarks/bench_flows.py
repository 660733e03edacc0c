"""Benchmark: a 50-step DAG run as one flow, against the same steps run one at a time in topological order.

    python benchmarks/bench_flows.py [--layers 5] [--width 10] [--step-s 0.2]

Both runs go through the same in-process engine (`Engine.open` and the Python API in
`effectd.api`); each step is a sleep command. It prints figures and asserts nothing about timing.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from effectd.api import run_effect, run_flow
from effectd.config import build_settings
from effectd.engine import Engine


def sleep_command(seconds: float) -> list[str]:
    program = shutil.which("sleep")
    if program is not None:
        return [program, str(seconds)]
    return [sys.executable, "-c", f"import time; time.sleep({seconds})"]


def wide_dag(layers: int, width: int, step_s: float, seed: int = 7) -> list[dict[str, Any]]:
    """`layers` layers of `width` steps; each step after the first layer needs 1 or 2 steps of the layer before."""
    pick = random.Random(seed)
    steps: list[dict[str, Any]] = []
    for layer in range(layers):
        for index in range(width):
            needs = []
            if layer > 0:
                previous = [f"s{layer - 1}_{i}" for i in range(width)]
                needs = sorted(pick.sample(previous, pick.choice((1, 2))))
            steps.append({"id": f"s{layer}_{index}", "needs": needs, "command": sleep_command(step_s)})
    return steps


async def bench(layers: int, width: int, step_s: float) -> None:
    steps = wide_dag(layers, width, step_s)
    with tempfile.TemporaryDirectory(prefix="effectd-bench-") as tmp:
        settings = build_settings({}, db=Path(tmp) / "bench.db", allow_any_command=True, max_concurrency=width * 2)
        async with Engine.open(settings) as engine:
            started = time.perf_counter()
            flow = await run_flow(engine, steps)
            flow_wall = time.perf_counter() - started
            if flow.status != "succeeded":
                raise SystemExit(f"the flow ended {flow.status}, not succeeded: {flow.model_dump_json(indent=1)}")

            started = time.perf_counter()
            for step in steps:  # already in topological order: layer by layer
                await run_effect(engine, command=step["command"])
            one_by_one = time.perf_counter() - started

    print(f"steps: {len(steps)} ({layers} layers of {width}, each a {step_s} s sleep, needing 1-2 of the layer before)")
    print(f"critical path (sleep only):  {layers * step_s:6.2f} s")
    print(f"sum of sleeps:               {len(steps) * step_s:6.2f} s")
    print(f"as one flow:                 {flow_wall:6.2f} s wall  (record: wall_s {flow.wall_s:.2f}, ", end="")
    print(f"sum_step_s {flow.sum_step_s:.2f}, speedup {flow.speedup:.2f}x)")
    print(f"one step at a time:          {one_by_one:6.2f} s wall")
    print(f"ratio one-at-a-time / flow:  {one_by_one / flow_wall:6.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--width", type=int, default=10)
    parser.add_argument("--step-s", type=float, default=0.2)
    args = parser.parse_args()
    anyio.run(bench, args.layers, args.width, args.step_s)


if __name__ == "__main__":
    main()
