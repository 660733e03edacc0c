"""The server as its users run it: `effectd serve` over stdio, driven by the official client.

Two cases, each beside plain asyncio in the same run:

- **throughput**: 300 x `/bin/true` dispatched in the background with 32 dispatch calls in flight,
  then one `await_group` (mode all) until complete; the server's CPU per effect comes from the
  server process's own user + system time (`/proc/PID/stat`, what its `time.process_time()` reads);
- **fan-out**: 64 x `sleep 0.5` dispatched at once, then one `await_group`: the wall time, and how
  long after its dispatch call returned each effect started.

`bench_engine.py` runs these as its section 0; run this file alone for just them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters

TRUE = "/bin/true"


def launch_chain(command: list[str]) -> list[str]:
    """`command` as effectd's local runner launches it where it has a cgroup per effect: through
    util-linux `setpriv --pdeathsig KILL` (the parent-death signal without a full fork) and the
    gate's `/bin/sh` (it holds the child until it is in its cgroup, then execs the command), two
    execs more than the command. Plain asyncio running this chain is what any server keeping those
    guarantees could reach at best; without `setpriv` on the machine, just the gate."""
    from effectd.runner.local import _SETPRIV

    chain = ["/bin/sh", "-c", 'exec 2>&1; exec "$@"', "sh", *command]  # the gate, less its read of one line
    return [_SETPRIV, "--pdeathsig", "KILL", "--", *chain] if _SETPRIV else chain


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class StdioRun:
    effects: int
    wall_s: float
    server_cpu_s: float
    failed: int
    start_delays_s: list[float]

    @property
    def rate(self) -> float:
        return self.effects / self.wall_s

    @property
    def cpu_ms_per_effect(self) -> float:
        return 1000 * self.server_cpu_s / self.effects


REPO = Path(__file__).resolve().parents[1]


def effectd_bin() -> str:
    """The `effectd` of this interpreter's environment, else the checkout's `.venv`."""
    beside = Path(sys.executable).parent / "effectd"
    return str(beside) if beside.exists() else str(REPO / ".venv" / "bin" / "effectd")


def params(workdir: Path, max_concurrency: int, binary: str | None = None) -> StdioServerParameters:
    return StdioServerParameters(
        command=binary or effectd_bin(),
        args=[
            "serve",
            "--db",
            str(workdir / "journal.db"),
            "--allow-any-command",
            "--max-concurrency",
            str(max_concurrency),
        ],
        cwd=str(workdir),
        env=dict(os.environ),
    )


def server_pid(workdir: Path) -> int:
    """The `effectd serve` process on this work directory's journal (a child of this process)."""
    needle = str(workdir / "journal.db").encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in argv and needle in argv:
            return int(entry)
    raise RuntimeError(f"no effectd serve process found for {workdir}")


def cpu_seconds(pid: int) -> float:
    """The process's own user + system CPU (not its children's): what its `time.process_time()` says."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def call(client: Client, tool: str, **arguments: Any) -> Any:
    """A tool call's structured result (or its JSON text); a tool error raises, with its text."""
    result = await client.call_tool(tool, arguments)
    if result.is_error:
        text = " ".join(getattr(block, "text", "") for block in result.content or [])
        raise RuntimeError(f"{tool}({arguments}) failed: {text}")
    data = result.structured_content
    if data is None:
        data = json.loads(result.content[0].text)  # type: ignore[union-attr]
    return data


async def await_all(client: Client, group: str) -> list[dict[str, Any]]:
    """await_group mode all until complete; returns the records (each effect once)."""
    done: list[dict[str, Any]] = []
    cursor = 0
    while True:
        answer = await call(client, "await_group", group=group, mode="all", timeout_s=55, cursor=cursor)
        done.extend(answer["done"])
        cursor = answer["cursor"]
        if answer["complete"]:
            return done


async def effectd_run(
    root: Path,
    command: list[str],
    count: int,
    in_flight: int,
    on_server: Callable[[int], None] | None = None,
    binary: str | None = None,
) -> StdioRun:
    """`count` background dispatches, `in_flight` calls outstanding at once, then one await_group;
    `on_server` is called with the server's pid before the clock starts; `binary`: another `effectd`."""
    workdir = Path(tempfile.mkdtemp(dir=root))
    async with Client(params(workdir, max(in_flight, 16), binary), read_timeout_seconds=120) as client:
        await call(client, "dispatch_effect", command=[TRUE])  # warm-up: first-call costs are not throughput
        pid = server_pid(workdir)
        if on_server is not None:
            on_server(pid)
        returned: dict[str, float] = {}
        next_index = 0

        async def dispatcher() -> None:
            nonlocal next_index
            while next_index < count:
                next_index += 1
                record = await call(client, "dispatch_effect", command=command, background=True, group="bench")
                returned[record["effect_id"]] = time.time()

        cpu0, t0 = cpu_seconds(pid), time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(in_flight):
                tg.start_soon(dispatcher)
        records = await await_all(client, "bench")
        wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    delays = [
        datetime.fromisoformat(r["started_at"]).timestamp() - returned[r["effect_id"]]
        for r in records
        if r.get("started_at") and r["effect_id"] in returned
    ]
    failed = sum(r["status"] != "succeeded" for r in records) + (count - len(records))
    return StdioRun(count, wall, cpu, failed, delays)


async def asyncio_run(command: list[str], count: int, in_flight: int) -> StdioRun:
    """The same commands through plain asyncio subprocesses, output captured, a semaphore of `in_flight`."""
    semaphore = asyncio.Semaphore(in_flight)
    failed = 0

    async def one() -> None:
        nonlocal failed
        async with semaphore:
            proc = await asyncio.create_subprocess_exec(
                *command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            await proc.communicate()
            failed += proc.returncode != 0

    await one()
    failed = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    return StdioRun(count, time.perf_counter() - t0, time.process_time() - cpu0, failed, [])


@dataclass
class StdioFigures:
    throughput: StdioRun
    throughput_base: StdioRun
    throughput_chain: StdioRun  # plain asyncio through effectd's launch chain
    fanout: StdioRun
    fanout_base: StdioRun
    runs: dict[str, list[float]]


async def measure(root: Path, repeats: int = 3, count: int = 300, fanout: int = 64) -> StdioFigures:
    """Each case `repeats` times, effectd and its baseline taking turns; the best of each is kept."""
    runs: dict[str, list[StdioRun]] = {"stdio": [], "asyncio": [], "chain": [], "fanout": [], "fanout_asyncio": []}
    sleep = ["sleep", "0.5"]
    for _ in range(repeats):
        runs["stdio"].append(await effectd_run(root, [TRUE], count, 32))
        runs["asyncio"].append(await asyncio_run([TRUE], count, 32))
        runs["chain"].append(await asyncio_run(launch_chain([TRUE]), count, 32))
        runs["fanout"].append(await effectd_run(root, sleep, fanout, fanout))
        runs["fanout_asyncio"].append(await asyncio_run(sleep, fanout, fanout))
    best = {kind: min(kind_runs, key=lambda r: r.wall_s) for kind, kind_runs in runs.items()}
    return StdioFigures(
        best["stdio"],
        best["asyncio"],
        best["chain"],
        best["fanout"],
        best["fanout_asyncio"],
        {kind: [round(r.wall_s, 3) for r in kind_runs] for kind, kind_runs in runs.items()},
    )


def report(figures: StdioFigures, say: Any = print) -> None:
    stdio, base = figures.throughput, figures.throughput_base
    say(
        f"  stdio, 300 x {TRUE}, 32 in flight, one await_group: {stdio.rate:5.0f} effects/s "
        f"(plain asyncio {base.rate:.0f}/s: {stdio.rate / base.rate:.2f}x); server CPU "
        f"{stdio.cpu_ms_per_effect:.2f} ms/effect{f'; {stdio.failed} NOT succeeded' if stdio.failed else ''}"
    )
    chain = figures.throughput_chain
    say(
        f"  plain asyncio through effectd's launch chain (setpriv, the gate's sh): {chain.rate:.0f}/s "
        f"({chain.rate / base.rate:.2f}x plain asyncio); effectd at {stdio.rate / chain.rate:.2f}x of it"
    )
    fan, fan_base = figures.fanout, figures.fanout_base
    late = max(fan.start_delays_s, default=float("nan"))
    say(
        f"  stdio, 64 x sleep 0.5 at once, one await_group: {fan.wall_s:.2f} s wall (plain asyncio "
        f"{fan_base.wall_s:.2f} s); latest start {1000 * late:.0f} ms after its dispatch returned, median "
        f"{1000 * statistics.median(fan.start_delays_s or [float('nan')]):.0f} ms"
    )
    say(f"  walls of every run (s): {figures.runs}")


async def profile(out: Path, count: int) -> StdioRun:
    """The throughput case with `count` effects while py-spy samples the server process (not the client)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.access(py_spy, os.X_OK):
        raise SystemExit("py-spy is not installed: pip install py-spy")
    spies: list[subprocess.Popen[bytes]] = []

    def spy(pid: int) -> None:
        argv = [py_spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--output", str(out)]
        spies.append(subprocess.Popen([*argv, "--nonblocking"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(1.0)  # py-spy attaches

    try:
        with tempfile.TemporaryDirectory(prefix="effectd-bench-") as tmp:
            return await effectd_run(Path(tmp), [TRUE], count, 32, on_server=spy)
    finally:
        for process in spies:
            process.wait(timeout=60)  # it ends with the server, and writes its file


def summarize(raw: Path, top: int = 40) -> None:
    """Shares of the event loop's thread: each function's own time, and with what it calls."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not stack or frames[0].startswith("Thread._bootstrap"):  # a worker thread: not the event loop
            continue
        total += int(count)
        own[frames[-1]] += int(count)
        for frame in {re.sub(r":\d+\)$", ")", f) for f in frames[1:]}:
            inclusive[frame] += int(count)
    for title, counter in (("own time", own), ("with what it calls", inclusive)):
        print(f"--- the event loop's thread, {title} (% of {total} samples) ---")
        for frame, n in counter.most_common(top):
            print(f"{100 * n / total:5.1f}  {frame}")


async def against(other: str, rounds: int) -> None:
    """This checkout's `effectd` and `other`, taking turns, `rounds` times: the fan-out and the throughput
    case, medians and ranges (a before/after comparison on one machine)."""
    kinds = {"this": effectd_bin(), "other": other}
    runs: dict[tuple[str, str], list[StdioRun]] = {}
    with tempfile.TemporaryDirectory(prefix="effectd-bench-") as tmp:
        for _ in range(rounds):
            for name, binary in kinds.items():
                fan = await effectd_run(Path(tmp), ["sleep", "0.5"], 64, 64, binary=binary)
                runs.setdefault((name, "fanout"), []).append(fan)
                runs.setdefault((name, "true"), []).append(await effectd_run(Path(tmp), [TRUE], 300, 32, binary=binary))

    def spread(values: list[float], unit: str, scale: float = 1.0) -> str:
        return f"{statistics.median(values) * scale:.0f}{unit} ({min(values) * scale:.0f}-{max(values) * scale:.0f})"

    for name, binary in kinds.items():
        fans, trues = runs[(name, "fanout")], runs[(name, "true")]
        print(f"{name}: {binary}")
        print(f"  fan-out 64 x sleep 0.5: wall {spread([r.wall_s for r in fans], ' ms', 1000)}")
        print(
            f"    latest start after its dispatch returned {spread([max(r.start_delays_s) for r in fans], ' ms', 1000)}"
        )
        print(f"    median start {spread([statistics.median(r.start_delays_s) for r in fans], ' ms', 1000)}")
        print(f"  300 x true, 32 in flight: {spread([r.rate for r in trues], '/s')}")
        print(f"    server CPU per effect {spread([r.cpu_ms_per_effect for r in trues], ' us', 1000)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", metavar="RAW", type=Path, help="py-spy the server instead (raw samples to RAW)")
    parser.add_argument("--effects", type=int, default=800, help="effects of the profiled run (default 800)")
    parser.add_argument("--against", metavar="EFFECTD", help="compare with another checkout's effectd, in turns")
    parser.add_argument("--rounds", type=int, default=8, help="rounds of --against (default 8)")
    args = parser.parse_args()
    if args.against:
        anyio.run(against, args.against, args.rounds, backend="asyncio")
        return
    if args.profile:
        run = anyio.run(profile, args.profile, args.effects, backend="asyncio")
        print(f"{run.rate:.0f} effects/s under py-spy; server CPU {run.cpu_ms_per_effect:.2f} ms/effect")
        summarize(args.profile)
        return

    async def measured() -> StdioFigures:
        with tempfile.TemporaryDirectory(prefix="effectd-bench-") as tmp:
            return await measure(Path(tmp))

    report(anyio.run(measured, backend="asyncio"))


if __name__ == "__main__":
    main()
