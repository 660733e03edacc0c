"""The cost of containment per effect: the same effects through the engine with the local runner in
each containment mode, taking turns in one run.

- "group": the leader's process group only (no containment: the baseline);
- "tree": the subreaper and the environment marker (where no writable cgroup exists);
- "cgroup": a cgroup per effect (the default where one is writable, as root here).

Run by bench_engine.py (section "containment"); alone: `.venv/bin/python -m benchmarks.bench_containment`.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio

from effectd.config.settings import build_settings
from effectd.engine.core import Engine
from effectd.model.arguments import EffectRequest
from effectd.runner.base import Launch
from effectd.runner.local import LocalRunner

TRUE = "/bin/true"


async def per_effect(workdir: Path, mode: str, count: int, concurrency: int) -> tuple[float, float]:
    """Wall and parent CPU milliseconds per effect for `count` x `true` at `concurrency`, in `mode`."""
    settings = build_settings({}, db=workdir / "journal.db", allow_any_command=True, max_concurrency=concurrency)
    runner = LocalRunner(mode)
    async with Engine.open(replace(settings, default_grace_s=1.0), runner=runner) as engine:
        await engine.dispatch(EffectRequest(command=[TRUE], group="warm-up"))
        await engine.await_group(group="warm-up", timeout_s=60)
        cpu0, t0 = time.process_time(), time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(count):
                tg.start_soon(engine.dispatch, EffectRequest(command=[TRUE], group="bench"))
        waited = await engine.await_group(group="bench", timeout_s=600)
        t1, cpu1 = time.perf_counter(), time.process_time()
        if runner.containment != mode or any(r.status != "succeeded" for r in waited.done):
            raise RuntimeError(f"containment {mode!r} did not run as asked ({runner.containment!r})")
    return (t1 - t0) * 1000 / count, (cpu1 - cpu0) * 1000 / count


async def runner_only(mode: str, count: int) -> float:
    """Milliseconds per effect of the runner alone, one at a time: start, output to its end, exit, the
    check that nothing of the effect is left, and the cleanup (no journal, no engine)."""
    runner = LocalRunner(mode)
    env = dict(os.environ)
    t0 = time.perf_counter()
    for n in range(count):
        handle = await runner.start(Launch([TRUE], env, effect_id=f"eff_bench_{os.getpid()}_{mode}_{n}"))
        while await handle.read():
            pass
        await handle.wait()
        if not await handle.wait_group_gone(1.0):
            raise RuntimeError(f"containment {mode!r}: processes left")
        handle.close()
    return (time.perf_counter() - t0) * 1000 / count


async def measure(root: Path, count: int, repeats: int) -> dict[str, dict[str, Any]]:
    """Best of `repeats` per mode and concurrency (1: one effect at a time, the latency; 16: throughput)."""
    modes = ["group", "tree"] + (["cgroup"] if LocalRunner("cgroup").containment == "cgroup" else [])
    results: dict[str, dict[str, Any]] = {}
    for concurrency in (1, 16):
        runs: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}
        for _ in range(repeats):
            for mode in modes:
                runs[mode].append(await per_effect(Path(tempfile.mkdtemp(dir=root)), mode, count, concurrency))
        results[str(concurrency)] = {mode: min(samples) for mode, samples in runs.items()}
    alone: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(repeats):
        for mode in modes:
            alone[mode].append(await runner_only(mode, count))
    results["runner"] = {mode: min(samples) for mode, samples in alone.items()}
    return results


async def _main() -> None:
    with tempfile.TemporaryDirectory(prefix="effectd-bench-") as tmp:
        results = await measure(Path(tmp), 100, 3)
        for mode, wall in results.pop("runner").items():
            print(f"runner alone   {mode:<6}  {wall:6.2f} ms/effect wall")
        for concurrency, modes in results.items():
            for mode, (wall, cpu) in modes.items():
                print(f"concurrency {concurrency:>2}  {mode:<6}  {wall:6.2f} ms/effect wall  {cpu:5.2f} ms/effect CPU")


if __name__ == "__main__":
    anyio.run(_main)
