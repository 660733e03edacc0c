"""The local runner against the Ray runner, in one run on this machine.

    .venv/bin/python benchmarks/bench_ray.py            # needs effectd[ray]; about 1-2 min on 2 cores

It starts one small local Ray (no dashboard, 80 MB object store) and measures, for each runner,
through the engine API:

- throughput: N effects of /bin/true, all dispatched at once, max_concurrency 64: effects/s;
- cancel latency: a running `sleep 60` cancelled with grace 1 s (sleep dies on SIGTERM): the
  median time from the cancel call to its answer (the process group gone);
- fan-out: a 64-step flow of `sleep 1`, all at once: its wall time;
- where the time goes (Ray): Ray's start, an executor actor's creation, one actor call's round trip,
  and an effect's start (created_at to started_at) on each runner.

It never asserts a timing. Every process it starts is ended; Ray is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from effectd.config.settings import build_settings  # noqa: E402
from effectd.engine.core import Engine  # noqa: E402
from effectd.flows.models import FlowRequest, Step  # noqa: E402
from effectd.model.arguments import EffectRequest  # noqa: E402

TRUE = "/bin/true"


def _seconds(a: str | None, b: str | None) -> float:
    if a is None or b is None:
        return float("nan")
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


async def measure(runner: str, db: Path, n: int, cancels: int) -> dict[str, Any]:
    settings = replace(
        build_settings({}, db=db, allow_any_command=True, runner=runner), default_grace_s=1.0, max_concurrency=64
    )
    out: dict[str, Any] = {}
    async with Engine.open(settings) as engine:
        # Warm-up: the first effect on Ray creates the node's executor actor.
        began = time.perf_counter()
        warm = await engine.dispatch(EffectRequest(command=[TRUE], group="warm"))
        await engine.await_group(group="warm", timeout_s=120)
        out["first_effect_s"] = time.perf_counter() - began
        out["node"] = (await engine.poll(warm.record.effect_id)).node

        group = f"tp-{runner}"
        began = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(n):
                tg.start_soon(engine.dispatch, EffectRequest(command=[TRUE], group=group))
        waited = await engine.await_group(group=group, timeout_s=600)
        out["effects_per_s"] = n / (time.perf_counter() - began)
        out["succeeded"] = sum(r.status == "succeeded" for r in waited.done)

        latencies, starts = [], []
        for _ in range(cancels):
            record = (await engine.dispatch(EffectRequest(command=["sleep", "60"], grace_s=1.0))).record
            with anyio.fail_after(60):
                while (await engine.poll(record.effect_id)).status != "running":  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            began = time.perf_counter()
            cancelled = await engine.cancel(record.effect_id)
            latencies.append(time.perf_counter() - began)
            assert cancelled.status == "cancelled", cancelled
            starts.append(_seconds(cancelled.created_at, cancelled.started_at))
        out["cancel_ms_median"] = 1000 * statistics.median(latencies)
        out["cancel_ms_max"] = 1000 * max(latencies)
        out["start_ms_median"] = 1000 * statistics.median(starts)

        steps = [Step(id=f"s{i}", command=["sleep", "1"]) for i in range(64)]
        began = time.perf_counter()
        flow = (await engine.dispatch_flow(FlowRequest(steps=steps, max_concurrency=64))).record
        flow = await engine.poll_flow(flow.flow_id, wait_s=120)
        out["fanout64_wall_s"] = time.perf_counter() - began
        out["fanout64_status"] = flow.status
    return out


def ray_overheads() -> dict[str, float]:
    import ray

    from effectd.runner.ray_runner import _executor_actor

    node = ray.get_runtime_context().get_node_id()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    began = time.perf_counter()
    actor = _executor_actor().options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
    ray.get(actor.info.remote())
    created = time.perf_counter() - began
    rtts = []
    for _ in range(200):
        began = time.perf_counter()
        ray.get(actor.running.remote())
        rtts.append(time.perf_counter() - began)
    ray.kill(actor)
    return {"actor_create_s": created, "actor_call_ms_median": 1000 * statistics.median(rtts)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=200, help="effects for the throughput figure")
    parser.add_argument("--cancels", type=int, default=10)
    args = parser.parse_args()
    import ray

    load = os.getloadavg()[0]
    began = time.perf_counter()
    ray.init(
        address="local",
        num_cpus=os.cpu_count() or 1,
        include_dashboard=False,
        object_store_memory=80 * 1024 * 1024,
        log_to_driver=False,
    )
    ray_start = time.perf_counter() - began
    results: dict[str, dict[str, Any]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for runner in ("local", "ray"):
                results[runner] = anyio.run(measure, runner, Path(tmp) / f"{runner}.db", args.n, args.cancels)
                print(runner, results[runner], flush=True)
            overheads = ray_overheads()
    finally:
        ray.shutdown()
    local, remote = results["local"], results["ray"]
    print()
    print("| figure | local | ray | ray/local |")
    print("|---|---|---|---|")
    for key, label in (
        ("effects_per_s", f"throughput, {args.n} x /bin/true, max_concurrency 64 (effects/s)"),
        ("start_ms_median", "one effect's start, created_at to started_at (median ms)"),
        ("cancel_ms_median", "cancel latency, sleep 60, grace 1 s (median ms)"),
        ("cancel_ms_max", "cancel latency (max ms)"),
        ("fanout64_wall_s", "64-way fan-out of `sleep 1` (wall s)"),
        ("first_effect_s", "the first effect of a fresh server (s)"),
    ):
        print(f"| {label} | {local[key]:.1f} | {remote[key]:.1f} | {remote[key] / local[key]:.2f} |")
    print()
    print(f"Ray's local start: {ray_start:.1f} s; an executor actor's creation: {overheads['actor_create_s']:.2f} s; ")
    print(f"one actor call's round trip: {overheads['actor_call_ms_median']:.2f} ms (median of 200)")
    print(
        f"succeeded: local {local['succeeded']}/{args.n}, ray {remote['succeeded']}/{args.n}; ray node {remote['node']}"
    )
    print(f"fan-out status: local {local['fanout64_status']}, ray {remote['fanout64_status']}")
    print(f"machine: {os.cpu_count()} CPUs, load {load:.2f} at start, {os.getloadavg()[0]:.2f} at end")
    print(f"command: {' '.join(sys.argv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
