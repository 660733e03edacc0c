"""effectd benchmarks: every figure beside a baseline measured in the same run, on the same machine.

    .venv/bin/python benchmarks/bench_engine.py            # full run, under ~2 minutes
    .venv/bin/python benchmarks/bench_engine.py --quick    # smoke check, under ~30 s
    .venv/bin/python benchmarks/bench_engine.py --json out.json   # also the results as JSON ("-": stdout)
    .venv/bin/python benchmarks/bench_engine.py --profile mcp      # cProfile of the throughput case instead
    .venv/bin/python benchmarks/bench_engine.py --profile engine   # the same through the engine API (no MCP)

Nothing here asserts a timing: a slow machine gives slow figures, never a failure. See README.md
beside this file for what each figure and its baseline mean.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import math
import os
import platform
import pstats
import select
import shlex
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
from mcp import Client, StdioServerParameters

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: the project is importable
    sys.path.insert(0, str(REPO))

from benchmarks import bench_stdio  # noqa: E402
from benchmarks.bench_containment import measure as measure_containment  # noqa: E402
from benchmarks.bench_stdio import asyncio_run, await_all, call, effectd_bin, launch_chain  # noqa: E402
from benchmarks.bench_tasks import task_client_extensions, task_round_trips  # noqa: E402
from effectd.app import build_server  # noqa: E402
from effectd.config.settings import build_settings  # noqa: E402
from effectd.engine.core import Engine  # noqa: E402
from effectd.journal.projection import Event  # noqa: E402
from effectd.journal.store import Journal  # noqa: E402
from effectd.model.arguments import EffectRequest  # noqa: E402
from effectd.model.records import now_iso  # noqa: E402

# Every process this run starts carries this mark, so the end-of-run check finds only our leftovers.
MARK_NAME = "BENCH_EFFECTD_RUN"  # not EFFECTD_*: effects never inherit those
MARK_VALUE = str(os.getpid())
os.environ[MARK_NAME] = MARK_VALUE

NOTES: dict[str, float] = {}  # side figures without a baseline, printed where measured and kept in the JSON
TRUE = "/bin/true" if os.path.exists("/bin/true") else "true"

# A child that prints `time.time_ns()` lines, flushed, `gap` seconds apart.
TICKER = """
import sys, time
count, gap = int(sys.argv[1]), float(sys.argv[2])
time.sleep(0.05)
for i in range(count):
    print(time.time_ns(), i, flush=True)
    time.sleep(gap)
"""

# A child that says "ready PID GRANDCHILD_PID" and sleeps. With "ignore" it ignores SIGTERM and starts a
# grandchild (which inherits the ignored SIGTERM, so only SIGKILL ends either of them).
SLEEPER = """
import os, signal, subprocess, sys, time
grandchild = 0
if sys.argv[1] == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    grandchild = subprocess.Popen(["sleep", "60"]).pid
print("ready", os.getpid(), grandchild, flush=True)
time.sleep(60)
"""


def py(code: str, *args: str) -> list[str]:
    return [sys.executable, "-u", "-c", code, *args]


# --- figures ----------------------------------------------------------------------------------------


@dataclass
class Figure:
    """One line of the final table: effectd's figure beside its baseline, measured in this run."""

    section: str
    what: str
    unit: str
    effectd: float
    baseline: float
    baseline_name: str
    higher_is_better: bool = False
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """effectd / baseline (for a rate below 1 is slower; for a latency above 1 is slower)."""
        return self.effectd / self.baseline if self.baseline else math.nan


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile by nearest rank (p99 of 100 samples is the 99th smallest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def ms(seconds: float) -> float:
    return seconds * 1000.0


def fmt(value: float) -> str:
    if math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def say(text: str = "") -> None:
    print(text, flush=True)


# --- processes ----------------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a zombie is dead, only not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            state = file.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def marked_processes() -> set[int]:
    """Live processes started by this run (they inherit the mark), not counting this process."""
    needle = f"{MARK_NAME}={MARK_VALUE}".encode()
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as file:
                environ = file.read()
        except OSError:
            continue
        if needle in environ.split(b"\0") and pid_alive(int(entry)):
            found.add(int(entry))
    return found


# --- an engine and its clients ----------------------------------------------------------------------


@asynccontextmanager
async def open_engine(workdir: Path, max_concurrency: int = 16) -> AsyncIterator[Engine]:
    """An engine on a fresh database in `workdir`, any command allowed, otherwise the server's defaults."""
    settings = build_settings({}, db=workdir / "journal.db", allow_any_command=True, max_concurrency=max_concurrency)
    async with Engine.open(replace(settings, default_grace_s=1.0)) as engine:
        yield engine


def stdio_params(workdir: Path) -> StdioServerParameters:
    return StdioServerParameters(
        command=effectd_bin(),
        args=["serve", "--db", str(workdir / "journal.db"), "--allow-any-command"],
        cwd=str(workdir),
        env=dict(os.environ),
    )


# --- 0. the server over stdio ---------------------------------------------------------------------------


async def bench_stdio_case(root: Path, repeats: int, figures: list[Figure]) -> None:
    say(
        "\n== 0. `effectd serve` over stdio, the official client: 300 x /bin/true with 32 dispatches in flight, "
        f"then one await_group; 64 x `sleep 0.5` at once; best of {repeats}, effectd and plain asyncio taking turns"
    )
    got = await bench_stdio.measure(root, repeats)
    bench_stdio.report(got, say)
    stdio, base, fan, fan_base = got.throughput, got.throughput_base, got.fanout, got.fanout_base
    late = max(fan.start_delays_s, default=math.nan)
    chain = got.throughput_chain
    figures += [
        Figure(
            "stdio",
            "effects/s, 300 x true, 32 in flight",
            "1/s",
            stdio.rate,
            base.rate,
            "plain asyncio + semaphore",
            higher_is_better=True,
            detail={"walls_s": got.runs},
        ),
        Figure(
            "stdio",
            "effects/s, 300 x true, 32 in flight",
            "1/s",
            stdio.rate,
            chain.rate,
            "plain asyncio, effectd's launch chain",
            higher_is_better=True,
        ),
        Figure(
            "stdio",
            "server CPU per effect",
            "ms",
            stdio.cpu_ms_per_effect,
            base.cpu_ms_per_effect,
            "plain asyncio (its process)",
        ),
        Figure("stdio", "64 x sleep 0.5 at once, wall", "s", fan.wall_s, fan_base.wall_s, "plain asyncio"),
        Figure("stdio", "latest start after its dispatch returned", "ms", 1000 * max(late, 0.0), 50.0, "the goal"),
    ]


# --- 1. throughput ------------------------------------------------------------------------------------


@dataclass
class Throughput:
    effects: int
    concurrency: int
    wall_s: float
    dispatch_s: float
    cpu_s: float
    events: int = 0
    batches: int = 0
    failed: int = 0

    @property
    def rate(self) -> float:
        return self.effects / self.wall_s


def count_events(engine: Engine) -> int:
    with sqlite3.connect(f"file:{engine.settings.db}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])


async def effectd_throughput(workdir: Path, count: int, concurrency: int, *, via_mcp: bool = True) -> Throughput:
    """`count` background dispatches (all at once, from a task group), then await_group mode all."""
    async with open_engine(workdir, concurrency) as engine, Client(build_server(engine)) as client:
        await call(client, "dispatch_effect", command=[TRUE])  # warm-up: first-call costs are not throughput
        events_before = count_events(engine)
        batches_before = engine.stats()["journal_transactions"]
        group = "throughput"
        cpu0, t0 = time.process_time(), time.perf_counter()
        if via_mcp:
            async with anyio.create_task_group() as tg:
                for _ in range(count):
                    tg.start_soon(lambda: call(client, "dispatch_effect", command=[TRUE], background=True, group=group))
            dispatched = time.perf_counter()
            records = await await_all(client, group)
            statuses = [r["status"] for r in records]
        else:
            request = EffectRequest(command=[TRUE], group=group)

            async def dispatch() -> None:
                await engine.dispatch(request)

            async with anyio.create_task_group() as tg:
                for _ in range(count):
                    tg.start_soon(dispatch)
            dispatched = time.perf_counter()
            waited = await engine.await_group(group=group, timeout_s=600)
            statuses = [r.status for r in waited.done]
        t1, cpu1 = time.perf_counter(), time.process_time()
        events_after = count_events(engine)
        return Throughput(
            effects=count,
            concurrency=concurrency,
            wall_s=t1 - t0,
            dispatch_s=dispatched - t0,
            cpu_s=cpu1 - cpu0,
            events=events_after - events_before,
            batches=engine.stats()["journal_transactions"] - batches_before,
            failed=sum(s != "succeeded" for s in statuses) + (count - len(statuses)),
        )


async def asyncio_throughput(count: int, concurrency: int, command: Sequence[str] = (TRUE,)) -> Throughput:
    """The same commands through plain asyncio subprocesses (output captured too), a semaphore of the same size."""
    run = await asyncio_run(list(command), count, concurrency)
    return Throughput(count, concurrency, run.wall_s, 0.0, run.server_cpu_s, failed=run.failed)


def best(runs: Sequence[Throughput]) -> Throughput:
    return max(runs, key=lambda t: t.rate)


async def bench_throughput(
    root: Path, count: int, concurrencies: Sequence[int], repeats: int, figures: list[Figure]
) -> None:
    say(
        f"\n== 1. throughput: {count} x `{TRUE}`, dispatched all at once (anyio task group), then await_group "
        f"mode all; best of {repeats}, the four kinds taking turns"
    )
    for concurrency in concurrencies:
        runs: dict[str, list[Throughput]] = {"mcp": [], "engine": [], "asyncio": [], "chain": []}
        for _ in range(repeats):
            runs["mcp"].append(await effectd_throughput(Path(tempfile.mkdtemp(dir=root)), count, concurrency))
            runs["engine"].append(
                await effectd_throughput(Path(tempfile.mkdtemp(dir=root)), count, concurrency, via_mcp=False)
            )
            runs["asyncio"].append(await asyncio_throughput(count, concurrency))
            runs["chain"].append(await asyncio_throughput(count, concurrency, launch_chain([TRUE])))
        mcp, direct, base, chain = (best(runs[kind]) for kind in ("mcp", "engine", "asyncio", "chain"))
        names = {
            "mcp": "effectd via MCP (in memory)",
            "engine": "effectd engine API (no MCP)",
            "asyncio": "plain asyncio",
            "chain": "asyncio, the launch chain",
        }
        for kind, t in (("mcp", mcp), ("engine", direct), ("asyncio", base), ("chain", chain)):
            extra = f", all dispatched after {t.dispatch_s:.2f} s" if t.dispatch_s else ""
            others = "/".join(f"{r.rate:.0f}" for r in runs[kind])
            say(
                f"  concurrency {concurrency:>2}  {names[kind]:<28} {t.rate:5.0f} effects/s  (runs {others}; "
                f"{t.wall_s:.2f} s wall{extra}; parent CPU {ms(t.cpu_s) / t.effects:.2f} ms/effect"
                f"{f'; {t.failed} NOT succeeded' if t.failed else ''})"
            )
        per_batch = mcp.events / mcp.batches if mcp.batches else math.nan
        say(
            f"  journal (MCP run, concurrency {concurrency}): {mcp.events} events in {mcp.batches} transactions "
            f"= {per_batch:.1f} events/transaction ({mcp.events / mcp.effects:.1f} events/effect)"
        )
        detail = {kind: [asdict(r) for r in kind_runs] for kind, kind_runs in runs.items()}
        figures += [
            Figure(
                "throughput",
                f"effects/s, concurrency {concurrency}, via MCP",
                "1/s",
                mcp.rate,
                base.rate,
                "plain asyncio + semaphore",
                higher_is_better=True,
                detail=detail,
            ),
            Figure(
                "throughput",
                f"effects/s, concurrency {concurrency}, engine API",
                "1/s",
                direct.rate,
                base.rate,
                "plain asyncio + semaphore",
                higher_is_better=True,
            ),
            Figure(
                "throughput",
                f"effects/s, concurrency {concurrency}, engine API",
                "1/s",
                direct.rate,
                chain.rate,
                "plain asyncio, effectd's launch chain",
                higher_is_better=True,
            ),
            Figure(
                "throughput",
                f"parent CPU per effect, concurrency {concurrency}, MCP",
                "ms",
                ms(mcp.cpu_s) / count,
                ms(base.cpu_s) / count,
                "plain asyncio + semaphore",
            ),
            Figure(
                "journal",
                f"events per transaction, concurrency {concurrency}",
                "events",
                per_batch,
                1.0,
                "one commit per event",
                higher_is_better=True,
                detail={"events": mcp.events, "batches": mcp.batches},
            ),
        ]


async def bench_journal(root: Path, appends: int, figures: list[Figure]) -> None:
    """One awaited `journal.append` (a commit through the group-commit writer) against a plain aiosqlite commit."""
    say(f"\n== 1b. journal: {appends} sequential awaited appends of one event")
    async with Journal.open(Path(tempfile.mkdtemp(dir=root)) / "journal.db") as journal:
        samples: list[float] = []
        for i in range(appends + 1):
            event = Event("RUN_CREATED", f"run_bench_{i}", None, {"created_at": now_iso()})
            t0 = time.perf_counter()
            await journal.append(event)
            samples.append(time.perf_counter() - t0)
        samples = samples[1:]  # the first is a warm-up
    base: list[float] = []
    async with aiosqlite.connect(Path(tempfile.mkdtemp(dir=root)) / "plain.db") as db:
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = NORMAL")
        await db.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, ts TEXT, run_id TEXT, type TEXT, data TEXT)")
        await db.commit()
        for i in range(appends + 1):
            data = json.dumps({"created_at": now_iso()})
            t0 = time.perf_counter()
            await db.execute(
                "INSERT INTO events (seq, ts, run_id, type, data) VALUES (?, ?, ?, ?, ?)",
                (i + 1, now_iso(), f"run_bench_{i}", "RUN_CREATED", data),
            )
            await db.commit()
            base.append(time.perf_counter() - t0)
        base = base[1:]
    show_latency("journal.append (awaited, one event)", samples, "aiosqlite execute + commit (baseline)", base)
    figures += latency_figures("journal", "one awaited append", samples, base, "aiosqlite insert + commit")


# --- 2. dispatch round trip -----------------------------------------------------------------------------


async def dispatch_round_trips(client: Client, calls: int) -> tuple[list[float], list[float]]:
    """Background dispatch round trips, each on an idle engine (the previous effect awaited, untimed), and
    poll_effect round trips of a finished effect (the MCP floor) taken in the same loop."""
    first = await call(client, "dispatch_effect", command=[TRUE], group="latency")  # warm-up, foreground
    await call(client, "poll_effect", effect_id=first["effect_id"])
    dispatch: list[float] = []
    poll: list[float] = []
    for _ in range(calls):
        t0 = time.perf_counter()
        record = await call(client, "dispatch_effect", command=[TRUE], background=True, group="latency")
        dispatch.append(time.perf_counter() - t0)
        await call(client, "await_group", effect_ids=[record["effect_id"]], mode="all", timeout_s=30)
        t0 = time.perf_counter()
        await call(client, "poll_effect", effect_id=first["effect_id"])
        poll.append(time.perf_counter() - t0)
    answer = await call(client, "await_group", group="latency", mode="all", timeout_s=30)
    if not answer["complete"] or any(r["status"] != "succeeded" for r in answer["done"]):
        say("  WARNING: some dispatched effects did not succeed")
    return dispatch, poll


async def client_validation_ms(client: Client, rounds: int = 200) -> float:
    """What the mcp client spends validating one EffectRecord against dispatch_effect's output schema."""
    from jsonschema import exceptions, validators  # type: ignore[import-untyped]

    record = await call(client, "dispatch_effect", command=[TRUE])
    schema = next(t.output_schema for t in (await client.list_tools()).tools if t.name == "dispatch_effect")
    validator = validators.validator_for(schema)(schema)
    t0 = time.perf_counter()
    for _ in range(rounds):
        exceptions.best_match(validator.iter_errors(record))
    return ms(time.perf_counter() - t0) / rounds


def latency_figures(section: str, what: str, samples: list[float], base: list[float], base_name: str) -> list[Figure]:
    detail = {"effectd_ms": [ms(s) for s in samples], "baseline_ms": [ms(s) for s in base]}
    return [
        Figure(section, f"{what} median", "ms", ms(statistics.median(samples)), ms(statistics.median(base)), base_name),
        Figure(section, f"{what} p99", "ms", ms(pct(samples, 0.99)), ms(pct(base, 0.99)), base_name, detail=detail),
    ]


def show_latency(label: str, samples: list[float], base_label: str, base: list[float]) -> None:
    for name, values in ((label, samples), (base_label, base)):
        say(
            f"  {name:<44} median {ms(statistics.median(values)):7.2f} ms   p99 {ms(pct(values, 0.99)):7.2f} ms"
            f"   (n={len(values)})"
        )


async def bench_task_round_trips(root: Path, calls: int, figures: list[Figure]) -> None:
    """MCP tasks: a client that declares io.modelcontextprotocol/tasks gets a CreateTaskResult for
    dispatch_effect; its round trip and tasks/get's, beside poll_effect in the same loop."""
    say("  MCP tasks (a client declaring io.modelcontextprotocol/tasks; poll_effect taken in the same loop):")
    tasks = task_client_extensions()
    async with (
        open_engine(Path(tempfile.mkdtemp(dir=root))) as engine,
        Client(build_server(engine), extensions=tasks) as client,
    ):
        create, get, poll = await task_round_trips(client, calls, [TRUE], call)
    show_latency("in memory: tools/call -> CreateTaskResult", create, "in memory: poll_effect (baseline)", poll)
    show_latency("in memory: tasks/get (finished task)", get, "in memory: poll_effect (baseline)", poll)
    figures += latency_figures("tasks", "in-memory task create", create, poll, "poll_effect, in memory")
    figures += latency_figures("tasks", "in-memory tasks/get", get, poll, "poll_effect, in memory")
    workdir = Path(tempfile.mkdtemp(dir=root))
    async with Client(stdio_params(workdir), read_timeout_seconds=70, extensions=task_client_extensions()) as client:
        create, get, poll = await task_round_trips(client, calls, [TRUE], call)
    show_latency("stdio: tools/call -> CreateTaskResult", create, "stdio: poll_effect (baseline)", poll)
    show_latency("stdio: tasks/get (finished task)", get, "stdio: poll_effect (baseline)", poll)
    figures += latency_figures("tasks", "stdio task create", create, poll, "poll_effect, stdio")
    figures += latency_figures("tasks", "stdio tasks/get", get, poll, "poll_effect, stdio")


async def bench_dispatch(root: Path, calls: int, figures: list[Figure]) -> None:
    say(
        f"\n== 2. dispatch_effect(background) round trip, {calls} sequential calls of `{TRUE}` (each awaited before "
        "the next, untimed); baseline poll_effect"
    )
    async with open_engine(Path(tempfile.mkdtemp(dir=root))) as engine, Client(build_server(engine)) as client:
        dispatch, poll = await dispatch_round_trips(client, calls)
        validation = await client_validation_ms(client)
    show_latency("in memory: dispatch_effect", dispatch, "in memory: poll_effect (baseline)", poll)
    say(
        f"  (the mcp client checks every result against the tool's output schema with jsonschema: "
        f"{validation:.2f} ms per EffectRecord, client-side, inside every in-memory figure)"
    )
    NOTES["client_jsonschema_ms_per_record"] = validation
    figures += latency_figures("dispatch", "in-memory dispatch", dispatch, poll, "poll_effect, in memory")

    workdir = Path(tempfile.mkdtemp(dir=root))
    t0 = time.perf_counter()
    async with Client(stdio_params(workdir), read_timeout_seconds=70) as client:
        started = time.perf_counter() - t0
        await call(client, "list_harnesses")
        dispatch, poll = await dispatch_round_trips(client, calls)
    show_latency("stdio: dispatch_effect", dispatch, "stdio: poll_effect (baseline)", poll)
    figures += latency_figures("dispatch", "stdio dispatch", dispatch, poll, "poll_effect, stdio")
    await bench_task_round_trips(root, calls, figures)

    t0 = time.perf_counter()
    importer = await anyio.run_process(
        [sys.executable, "-c", "import mcp.server.mcpserver, aiosqlite, pydantic"], check=True
    )
    imports = time.perf_counter() - t0
    say(
        f"  stdio server start to initialized: {started:.2f} s; "
        f"baseline `python -c 'import mcp.server.mcpserver, aiosqlite, pydantic'`: {imports:.2f} s"
        f"{'' if importer.returncode == 0 else ' (FAILED)'}"
    )
    figures.append(Figure("startup", "stdio server start + initialize", "s", started, imports, "python + imports"))


# --- 3. stream latency --------------------------------------------------------------------------------


def line_delays(buffer: bytes, now_ns: int, into: list[float]) -> bytes:
    """Appends, for every complete line in `buffer`, the seconds since the child stamped it; returns the rest."""
    *lines, rest = buffer.split(b"\n")
    for line in lines:
        if line.strip():
            into.append((now_ns - int(line.split()[0])) / 1e9)
    return rest


async def effectd_stream(client: Client, lines: int, gap: float) -> list[float]:
    record = await call(client, "dispatch_effect", command=py(TICKER, str(lines), str(gap)), background=True)
    delays: list[float] = []
    cursor, buffer = 0, b""
    while True:
        chunk = await call(client, "stream_effect", effect_id=record["effect_id"], cursor=cursor, wait_s=10)
        now = time.time_ns()
        cursor = chunk["cursor"]
        buffer = line_delays(buffer + chunk["data"].encode(), now, delays)
        if chunk["eof"]:
            break
    final = await call(client, "poll_effect", effect_id=record["effect_id"])
    if final["status"] != "succeeded" or len(delays) != lines:
        say(f"  WARNING: ticker effect ended {final['status']} with {len(delays)} of {lines} lines")
    return delays


async def asyncio_stream(lines: int, gap: float) -> list[float]:
    proc = await asyncio.create_subprocess_exec(
        *py(TICKER, str(lines), str(gap)), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    delays: list[float] = []
    async for line in proc.stdout:
        line_delays(line, time.time_ns(), delays)
    await proc.wait()
    return delays


async def bench_stream(root: Path, lines: int, gap: float, figures: list[Figure]) -> None:
    say(f"\n== 3. stream latency: {lines} lines {ms(gap):.0f} ms apart, child stamps time.time_ns() and flushes")
    async with open_engine(Path(tempfile.mkdtemp(dir=root))) as engine, Client(build_server(engine)) as client:
        delays = await effectd_stream(client, lines, gap)
    base = await asyncio_stream(lines, gap)
    show_latency("in memory: stream_effect(wait_s=10) long poll", delays, "asyncio pipe readline (baseline)", base)
    figures += latency_figures("stream", "line to stream_effect", delays, base, "asyncio pipe readline")


# --- 4. cancel latency --------------------------------------------------------------------------------


@dataclass
class CancelRun:
    seconds: float
    pids: list[int]
    alive_after: list[int]
    status: str = "cancelled"


async def effectd_cancel(client: Client, mode: str, grace_s: float) -> CancelRun:
    record = await call(client, "dispatch_effect", command=py(SLEEPER, mode), background=True)
    effect_id = record["effect_id"]
    cursor, text = 0, ""
    while "\n" not in text:
        chunk = await call(client, "stream_effect", effect_id=effect_id, cursor=cursor, wait_s=10)
        cursor, text = chunk["cursor"], text + chunk["data"]
        if chunk["eof"]:
            raise RuntimeError(f"sleeper effect ended before it was ready: {chunk}")
    pids = [int(p) for p in text.split()[1:3] if int(p)]
    t0 = time.perf_counter()
    final = await call(client, "cancel_effect", effect_id=effect_id, grace_s=grace_s)
    seconds = time.perf_counter() - t0
    return CancelRun(seconds, pids, [p for p in pids if pid_alive(p)], final["status"])


def by_hand_cancel(mode: str, grace_s: float) -> CancelRun:
    """The floor: killpg(SIGTERM), wait for the leader (pidfd), killpg(SIGKILL) after grace, until the group is gone."""
    proc = subprocess.Popen(py(SLEEPER, mode), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None
    try:
        pids = [int(p) for p in proc.stdout.readline().split()[1:3] if int(p)]
        pidfd = os.pidfd_open(proc.pid)
        try:
            t0 = time.perf_counter()
            os.killpg(proc.pid, signal.SIGTERM)
            if not select.select([pidfd], [], [], grace_s)[0]:
                os.killpg(proc.pid, signal.SIGKILL)
                select.select([pidfd], [], [], 10)
            proc.wait()
            while any(pid_alive(p) for p in pids[1:]):  # the grandchild: an orphan now, reaped by PID 1
                time.sleep(0.0005)
            seconds = time.perf_counter() - t0
        finally:
            os.close(pidfd)
    finally:
        proc.stdout.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return CancelRun(seconds, pids, [p for p in pids if pid_alive(p)])


async def bench_cancel(root: Path, reps: int, figures: list[Figure]) -> None:
    say(f"\n== 4. cancel latency: cancel_effect call until the group is gone, {reps} runs each")
    cases = (
        ("honours SIGTERM", "honour", 0.2),
        ("ignores SIGTERM + grandchild, grace_s=0.2", "ignore", 0.2),
    )
    async with open_engine(Path(tempfile.mkdtemp(dir=root))) as engine, Client(build_server(engine)) as client:
        for label, mode, grace in cases:
            runs = [await effectd_cancel(client, mode, grace) for _ in range(reps)]
            base = [await anyio.to_thread.run_sync(by_hand_cancel, mode, grace) for _ in range(reps)]
            left = sum(len(r.alive_after) for r in runs)
            wrong = [r.status for r in runs if r.status != "cancelled"]
            procs = max(len(r.pids) for r in runs)
            say(
                f"  {label:<44} effectd median {ms(statistics.median(r.seconds for r in runs)):7.1f} ms  "
                f"by hand median {ms(statistics.median(r.seconds for r in base)):7.1f} ms   "
                f"({procs} process(es) each; alive after return: {left}"
                f"{f'; statuses {wrong}' if wrong else ''})"
            )
            figures.append(
                Figure(
                    "cancel",
                    f"cancel, child {label}",
                    "ms",
                    ms(statistics.median(r.seconds for r in runs)),
                    ms(statistics.median(r.seconds for r in base)),
                    "killpg + waitpid by hand",
                    detail={
                        "effectd_ms": [ms(r.seconds) for r in runs],
                        "baseline_ms": [ms(r.seconds) for r in base],
                        "alive_after_return": left,
                    },
                )
            )


# --- containment --------------------------------------------------------------------------------------


async def bench_containment(root: Path, count: int, repeats: int, figures: list[Figure]) -> None:
    say(
        f"\n== 6. containment: {count} x `{TRUE}` through the engine, per containment mode of the local runner, "
        f"taking turns; best of {repeats}"
    )
    results = await measure_containment(root, count, repeats)
    names = {"tree": "subreaper + marker", "cgroup": "cgroup per effect"}
    alone = results.pop("runner")
    for mode, wall in alone.items():
        say(f"  runner alone, one at a time  {mode:<6} {wall:6.2f} ms/effect (start, exit, nothing left, cleanup)")
        if mode != "group":
            base = "process group only (no containment)"
            figures.append(
                Figure("containment", f"runner alone per effect, {names[mode]}", "ms", wall, alone["group"], base)
            )
    for concurrency, modes in results.items():
        base_wall, base_cpu = modes["group"]
        for mode, (wall, cpu) in modes.items():
            say(
                f"  concurrency {concurrency:>2}  {mode:<6} {wall:6.2f} ms/effect wall  {cpu:5.2f} ms/effect parent CPU"
            )
            if mode == "group":
                continue
            base = "process group only (no containment)"
            figures += [
                Figure(
                    "containment",
                    f"wall per effect, concurrency {concurrency}, {names[mode]}",
                    "ms",
                    wall,
                    base_wall,
                    base,
                ),
                Figure(
                    "containment",
                    f"CPU per effect, concurrency {concurrency}, {names[mode]}",
                    "ms",
                    cpu,
                    base_cpu,
                    base,
                ),
            ]


# --- the run ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    effects: int
    concurrencies: tuple[int, ...]
    calls: int
    lines: int
    gap_s: float
    cancels: int
    repeats: int
    appends: int


FULL = Plan(effects=500, concurrencies=(16, 32), calls=200, lines=100, gap_s=0.02, cancels=10, repeats=2, appends=200)
QUICK = Plan(effects=100, concurrencies=(16,), calls=40, lines=25, gap_s=0.02, cancels=3, repeats=1, appends=50)


def machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,)
    return {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg_1m": load[0],
    }


def print_table(figures: list[Figure]) -> None:
    rows = [("section", "what", "unit", "effectd", "baseline", "effectd/base", "baseline is")]
    first_seen = {section: n for n, section in reversed(list(enumerate(f.section for f in figures)))}
    rows += [
        (f.section, f.what, f.unit, fmt(f.effectd), fmt(f.baseline), f"{fmt(f.ratio)}x", f.baseline_name)
        for f in sorted(figures, key=lambda f: first_seen[f.section])
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    numeric = {3, 4, 5}
    for n, row in enumerate(rows):
        cells = [
            cell.rjust(w) if i in numeric else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        say("  ".join(cells).rstrip())
        if n == 0:
            say("  ".join("-" * w for w in widths))


async def run(plan: Plan, command: str) -> tuple[list[Figure], dict[str, Any]]:
    facts = machine()
    say(f"effectd benchmarks: {command}")
    say(
        f"machine: {facts['cpus']} CPUs ({facts['cpus_usable']} usable), {facts['implementation']} "
        f"{facts['python']}, {facts['platform']}, load {facts['loadavg_1m']:.2f}"
    )
    figures: list[Figure] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="effectd-bench-") as tmp:
        root = Path(tmp)
        await bench_stdio_case(root, plan.repeats + 1, figures)
        await bench_throughput(root, plan.effects, plan.concurrencies, plan.repeats, figures)
        await bench_journal(root, plan.appends, figures)
        await bench_dispatch(root, plan.calls, figures)
        await bench_stream(root, plan.lines, plan.gap_s, figures)
        await bench_cancel(root, plan.cancels, figures)
        await bench_containment(root, max(20, plan.effects // 5), plan.repeats + 1, figures)
    facts["wall_s"] = time.perf_counter() - started
    facts["loadavg_1m_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    return figures, facts


async def leftovers(within_s: float = 5.0) -> list[int]:
    """Processes of this run still alive (grandchildren orphaned to PID 1 can take a moment)."""
    left = marked_processes()
    for _ in range(int(within_s / 0.05)):
        if not left:
            break
        await anyio.sleep(0.05)
        left = marked_processes()
    return sorted(left)


def profile_throughput(plan: Plan, top: int, via_mcp: bool) -> None:
    """cProfile of one throughput run (the event loop's thread only; aiosqlite's thread is not seen)."""
    profiler = cProfile.Profile()

    async def main() -> Throughput:
        with tempfile.TemporaryDirectory(prefix="effectd-bench-") as tmp:
            profiler.enable()
            try:
                return await effectd_throughput(Path(tmp), plan.effects, plan.concurrencies[0], via_mcp=via_mcp)
            finally:
                profiler.disable()

    result = anyio.run(main, backend="asyncio")
    say(
        f"profile: {result.effects} effects, concurrency {result.concurrency}: {result.rate:.0f} effects/s under "
        f"cProfile, parent CPU {ms(result.cpu_s) / result.effects:.2f} ms/effect"
    )
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.strip_dirs().sort_stats(order).print_stats(top)
        say(f"\n--- top {top} by {order} ---")
        say(out.getvalue().split("\n", 4)[-1] if "ncalls" in out.getvalue() else out.getvalue())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer samples: a smoke check in under ~30 s")
    parser.add_argument("--json", metavar="PATH", nargs="?", const="-", help="also write the results as JSON")
    parser.add_argument(
        "--profile",
        choices=("mcp", "engine"),
        help="instead of the figures: cProfile the throughput case, through MCP or the engine API",
    )
    parser.add_argument("--top", type=int, default=30, help="rows of profile output (with --profile)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    command = shlex.join([os.path.relpath(sys.executable), os.path.relpath(__file__), *sys.argv[1:]])

    if args.profile:
        profile_throughput(plan, args.top, args.profile == "mcp")
        return 0

    async def everything() -> tuple[list[Figure], dict[str, Any], list[int]]:
        figures, facts = await run(plan, command)
        return figures, facts, await leftovers()

    figures, facts, left = anyio.run(everything, backend="asyncio")
    say(f"\n== summary ({'quick' if args.quick else 'full'} run, {facts['wall_s']:.1f} s; effectd/base: see README)")
    print_table(figures)
    say(f"\ncommand: {command}")
    say(
        f"machine: {facts['cpus']} CPUs, Python {facts['python']}; 1-minute load {facts['loadavg_1m']:.2f} at start, "
        f"{facts['loadavg_1m_end']:.2f} at end (other work on the machine skews every figure)"
    )
    say(f"processes of this run left alive: {left if left else 'none'}")
    if args.json:
        document = {
            "command": command,
            "mode": "quick" if args.quick else "full",
            "machine": facts,
            "leftover_processes": left,
            "notes": NOTES,
            "figures": [{**asdict(f), "ratio": f.ratio} for f in figures],
        }
        text = json.dumps(document, indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
            say(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
