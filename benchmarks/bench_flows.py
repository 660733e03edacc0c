"""Benchmark: a 50-step DAG run as one flow, against the same steps run one at a time in topological order;
a pipe `a | b` against `a` then `b`; a fan-out over 100 items against the items one at a time.

    python benchmarks/bench_flows.py [--layers 5] [--width 10] [--step-s 0.2] [--items 100] [--pipe-s 1.0]

Every run goes through the same in-process engine (`Engine.open` and the Python API in
`effectd.api`); each step is a sleep command (the pipe's: a producer printing a line every 0.1 s and
a consumer taking 0.1 s per line). It prints figures and asserts nothing about timing.
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
from effectd.config.settings import build_settings
from effectd.engine.core import Engine


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


PRODUCE = "import sys, time\nfor i in range(int(sys.argv[1])):\n    print(i, flush=True)\n    time.sleep(0.1)\n"
CONSUME = "import sys, time\nfor line in sys.stdin:\n    time.sleep(0.1)\n"


async def bench_pipe(engine: Engine, pipe_s: float) -> None:
    """`a | b` (b reads a's output while a runs) against `a` then `b` (b reads a's output once a ended)."""
    lines = str(max(1, round(pipe_s / 0.1)))
    produce = [sys.executable, "-c", PRODUCE, lines]
    consume = [sys.executable, "-c", CONSUME]
    piped = [{"id": "a", "command": produce}, {"id": "b", "needs": [{"step": "a", "pipe": True}], "command": consume}]
    reads_after = {"id": "b", "needs": ["a"], "stdin": "{{steps.a.output}}", "command": consume}
    after = [{"id": "a", "command": produce}, reads_after]
    for label, steps in (("a | b piped:", piped), ("a then b:", after)):
        flow = await run_flow(engine, steps)
        if flow.status != "succeeded":
            raise SystemExit(f"the flow ended {flow.status}: {flow.model_dump_json(indent=1)}")
        a, b = flow.steps
        print(f"{label:<28} {flow.wall_s or 0:6.2f} s wall  (a {a.duration_s or 0:.2f} s, b {b.duration_s or 0:.2f} s)")


async def bench_fan_out(engine: Engine, items: int, step_s: float) -> None:
    """One step fanned out over `items` items against the same effects dispatched one at a time."""
    started = time.perf_counter()
    flow = await run_flow(engine, [{"id": "each", "for_each": list(range(items)), "command": sleep_command(step_s)}])
    fanned = time.perf_counter() - started
    if flow.status != "succeeded" or len(flow.steps[0].children) != items:
        raise SystemExit(f"the fan-out ended {flow.status}: {flow.model_dump_json(indent=1)}")
    started = time.perf_counter()
    for _ in range(items):
        await run_effect(engine, command=sleep_command(step_s))
    one_by_one = time.perf_counter() - started
    label = f"fan-out of {items} items:"
    print(f"{label:<28} {fanned:6.2f} s wall  ({items} x {step_s} s sleeps, cap {engine.settings.max_concurrency})")
    label = f"{items} items one at a time:"
    print(f"{label:<28} {one_by_one:6.2f} s wall  (ratio {one_by_one / fanned:.2f}x)")


async def bench(layers: int, width: int, step_s: float, items: int = 100, pipe_s: float = 1.0) -> None:
    steps = wide_dag(layers, width, step_s)
    with tempfile.TemporaryDirectory(prefix="effectd-bench-") as tmp:
        cap = max(width * 2, 50)
        settings = build_settings({}, db=Path(tmp) / "bench.db", allow_any_command=True, max_concurrency=cap)
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
            report_dag(steps, layers, width, step_s, flow, flow_wall, one_by_one)
            await bench_pipe(engine, pipe_s)
            await bench_fan_out(engine, items, step_s)


def report_dag(
    steps: list[dict[str, Any]], layers: int, width: int, step_s: float, flow: Any, flow_wall: float, one_by_one: float
) -> None:
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
    parser.add_argument("--items", type=int, default=100, help="items of the fan-out (default 100)")
    parser.add_argument("--pipe-s", type=float, default=1.0, help="how long each side of the pipe runs (1.0)")
    args = parser.parse_args()
    anyio.run(bench, args.layers, args.width, args.step_s, args.items, args.pipe_s)


if __name__ == "__main__":
    main()
