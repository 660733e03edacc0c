"""Many live effects (issue 26): N chatty effects at once over stdio, each printing a timestamped line every
100 ms, beside a plain asyncio reader of the same children in the same run.

    .venv/bin/python benchmarks/bench_live.py                  # 1,000 effects, 10 s of chatter, ~1 min
    .venv/bin/python benchmarks/bench_live.py --effects 200 --seconds 5
    .venv/bin/python benchmarks/bench_live.py --json out.json

What it prints, for effectd (`effectd serve` over stdio, driven by the official client) and for plain
asyncio (`asyncio.create_subprocess_exec`, stdout piped, every line read):
- **dispatch**: N background `dispatch_effect` calls, 32 in flight, until every effect runs: effects/s;
- **CPU**: the server's own CPU (`/proc/PID/stat`, user + system, threads included) over a window of
  chatter alone (no call in flight), as a share of one core, and the plain reader's (`time.process_time()`
  of this process, which then does nothing else);
- **RSS per effect**: the server's resident memory with N effects running less its memory before the
  first dispatch, divided by N (the plain reader's likewise);
- **stream latency**, in a second window of the same length: `stream_effect` long polls (`wait_s` 5, one
  caller per watched effect, on `--watched` effects, 10 by default),
  from the moment the child wrote a line (its own timestamp) to the moment the poll that carried it
  returned; for plain asyncio, to the moment its `readline()` returned. p50 and p99.
The children are one perl each (`print` then `select` for 0.1 s: no process per tick). Nothing asserts a
timing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import anyio
from mcp.client import Client

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: the project is importable
    sys.path.insert(0, str(REPO))

from benchmarks.bench_stdio import call, cpu_seconds, params, server_pid  # noqa: E402

CHATTY = [
    "perl",
    "-MTime::HiRes=time",
    "-e",
    '$|=1; while (1) { printf "tick %.6f\\n", time; select(undef, undef, undef, 0.1) }',
]
PAGE = 4096


@dataclass
class Live:
    effects: int
    dispatch_per_s: float
    cpu_share: float  # of one core, over the chatter window
    rss_kib_per_effect: float
    latencies_ms: list[float] = field(default_factory=list)
    polling_cpu_share: float | None = None  # the server's CPU while the long polls ran (effectd only)

    def p(self, q: float) -> float:
        ordered = sorted(self.latencies_ms) or [float("nan")]
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def stamps(text: str, at: float, since: float) -> list[float]:
    """Latencies (ms) of the complete tick lines in `text` written after wall time `since`, received at `at`
    (a line from before the window is a backlog, not a latency)."""
    found = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "tick":
            try:
                written = float(parts[1])
            except ValueError:
                continue
            if written >= since:
                found.append(1000 * (at - written))
    return found


async def running(client: Client) -> list[dict[str, object]]:
    listed = await call(client, "list_effects", group="live", status=["running"], limit=1000)
    return list(listed["effects"])


async def effectd_live(count: int, seconds: float, watched: int) -> Live:
    with tempfile.TemporaryDirectory(prefix="effectd-bench-") as tmp:
        workdir = Path(tmp)
        async with Client(params(workdir, count + 16), read_timeout_seconds=120) as client:
            await call(client, "list_harnesses")
            pid = server_pid(workdir)
            rss0 = rss_kib(pid)
            ids: list[str] = []
            t0 = time.perf_counter()

            async def dispatcher(share: int) -> None:
                for _ in range(share):
                    record = await call(client, "dispatch_effect", command=CHATTY, background=True, group="live")
                    ids.append(record["effect_id"])

            async with anyio.create_task_group() as tg:
                for worker in range(32):
                    tg.start_soon(dispatcher, count // 32 + (worker < count % 32))
            dispatch_s = time.perf_counter() - t0
            with anyio.fail_after(120):  # every one of them running before the window opens
                while len(await running(client)) < count:  # noqa: ASYNC110 - the server's state, with a bound
                    await anyio.sleep(0.2)
            cpu0, t1 = cpu_seconds(pid), time.perf_counter()
            await anyio.sleep(seconds)  # the chatter alone: what the effects cost the server
            cpu, window = cpu_seconds(pid) - cpu0, time.perf_counter() - t1
            rss = rss_kib(pid)
            latencies: list[float] = []
            started, since = time.perf_counter(), time.time()

            async def watch(effect_id: str) -> None:
                cursor, pending = 0, ""
                while time.perf_counter() - started < seconds:
                    chunk = await call(client, "stream_effect", effect_id=effect_id, cursor=cursor, wait_s=5)
                    at = time.time()
                    text, _, pending = (pending + chunk["data"]).rpartition("\n")
                    latencies.extend(stamps(text, at, since))
                    cursor = chunk["cursor"]

            cpu1 = cpu_seconds(pid)
            async with anyio.create_task_group() as tg:
                for effect_id in ids[:watched]:
                    tg.start_soon(watch, effect_id)
            polling = (cpu_seconds(pid) - cpu1) / (time.perf_counter() - started)
            await call(client, "cancel_group", group="live")  # perl ends at the SIGTERM
    return Live(count, count / dispatch_s, cpu / window, (rss - rss0) / count, latencies, polling)


async def asyncio_live(count: int, seconds: float, watched: int) -> Live:
    rss0 = rss_kib(os.getpid())
    latencies: list[float] = []
    t0 = time.perf_counter()
    procs = [
        await asyncio.create_subprocess_exec(
            *CHATTY, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for _ in range(count)
    ]
    dispatch_s = time.perf_counter() - t0
    cpu0, started, since = time.process_time(), time.perf_counter(), time.time()

    async def read(index: int, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while time.perf_counter() - started < seconds:
            line = await proc.stdout.readline()
            if index < watched:
                latencies.extend(stamps(line.decode(), time.time(), since))

    await asyncio.gather(*(read(i, p) for i, p in enumerate(procs)))
    window, cpu = time.perf_counter() - started, time.process_time() - cpu0
    rss = rss_kib(os.getpid())
    for proc in procs:
        proc.kill()
    for proc in procs:
        await proc.wait()
    return Live(count, count / dispatch_s, cpu / window, (rss - rss0) / count, latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--effects", type=int, default=1000, help="effects at once (default 1000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="the chatter window (default 10)")
    parser.add_argument("--watched", type=int, default=10, help="effects long-polled for the latency (default 10)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    options = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8 * options.effects + 1024)), hard))
    plain = asyncio.run(asyncio_live(options.effects, options.seconds, options.watched))
    ours = anyio.run(effectd_live, options.effects, options.seconds, options.watched)
    for name, run in (("effectd (stdio)", ours), ("plain asyncio", plain)):
        print(
            f"{name:16} {run.effects} effects: dispatch {run.dispatch_per_s:.0f}/s; CPU {100 * run.cpu_share:.0f}% "
            f"of a core; RSS {run.rss_kib_per_effect:.0f} KiB/effect; stream latency p50 {run.p(0.5):.0f} ms, "
            f"p99 {run.p(0.99):.0f} ms ({len(run.latencies_ms)} lines)"
        )
    print(f"effectd's CPU at {ours.cpu_share / plain.cpu_share:.2f}x the plain reader's")
    print(f"effectd's CPU while the long polls ran: {100 * (ours.polling_cpu_share or 0):.0f}% of a core")
    if options.json:
        options.json.write_text(json.dumps({"effectd": asdict(ours), "asyncio": asdict(plain)}))


if __name__ == "__main__":
    main()
