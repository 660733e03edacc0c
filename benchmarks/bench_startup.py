"""Start-up (issues 17 and 26): from spawning `effectd serve` (stdio) to its answer to `initialize`, beside
the bare MCP SDK import and a bare python, in the same run, the cases taking turns; and with a warm
start-up cache, to `tools/list` and to the first `tools/call`.

    .venv/bin/python benchmarks/bench_startup.py              # 7 rounds, ~1 min on 2 cores
    .venv/bin/python benchmarks/bench_startup.py --runs 3     # quicker
    .venv/bin/python benchmarks/bench_startup.py --json out.json

Rows (medians of the rounds):
- `effectd serve`: spawned as a client spawns it, with the environment as it is. Timed to the answer to
  `initialize`, and on to the answer to `tools/list` (what a client needs before it can call a tool).
- the same with bytecode: PYTHONPYCACHEPREFIX set to a directory this run warmed once (and
  PYTHONDONTWRITEBYTECODE unset). An editable install under PYTHONDONTWRITEBYTECODE has no bytecode for
  effectd's own modules, so each start compiles them; a wheel install has it (pip compiles at install).
- the same with a warm start-up cache (issue 26): to the answer to `tools/list` (from the cache, while the
  SDK imports) and to the answer to a first `tools/call` (`list_effects`, by the real server), the client
  sending each request on the answer before it. The rows above run with the cache off
  (EFFECTD_NO_STARTUP_CACHE=1): the server's own start.
- `python -c "import mcp.server.mcpserver"`: the SDK alone, the issue's yardstick.
- `python -c "import mcp_types.methods"`: the protocol types, which every SDK server imports (the floor).
- `python -c pass`.

Then where the time goes: effectd's start-up in phases (timed inside one process, with bytecode), and the
SDK import by `-X importtime` grouped by what it is for (shares of one profiled import, scaled to the
measured SDK import: the profiler inflates every module alike). Nothing asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: the project is importable
    sys.path.insert(0, str(REPO))

from benchmarks.bench_stdio import effectd_bin  # noqa: E402

PROTOCOL = "2025-11-25"  # what Claude Code 2.x asks for

# effectd's start-up in phases, as `effectd serve` runs them (cli.main.cmd_serve, app.serve).
PHASES = """
import json, sys, time
from pathlib import Path
clock = time.perf_counter
marks = {}
t = clock()
import anyio, mcp.server.mcpserver, mcp.server.stdio
marks["SDK import (mcp.server.mcpserver, stdio, anyio)"] = clock() - t; t = clock()
from effectd.cli.main import parser
from effectd.config.settings import build_settings
from effectd.journal.usable import check_journal
import effectd.app
from effectd.engine.core import Engine
from effectd.tools import effects, streams, flows, budgets
from effectd.protocol import resources, prompts
from effectd.protocol.tasks import extension, legacy
marks["effectd's modules"] = clock() - t; t = clock()
settings = build_settings({}, db=Path(sys.argv[1]))
check_journal(settings.db)
async def main():
    global t
    async with Engine.open(settings) as engine:
        marks["Engine.open (fresh journal)"] = clock() - t; t = clock()
        effectd.app.build_server(engine)
        marks["build_server (tool schemas)"] = clock() - t; t = clock()
anyio.run(main)
print(json.dumps(marks))
"""

# The SDK import's modules, by what they are for: a module counts for the first group its own name
# matches, else for the group of the module that imported it.
GROUPS = [
    ("protocol types (mcp_types)", ("mcp_types", "mcp.types")),
    (
        "HTTP transports (starlette, uvicorn, httpx2, sse, auth, click, cryptography)",
        (
            "starlette",
            "uvicorn",
            "httpx2",
            "sse_starlette",
            "python_multipart",
            "click",
            "cryptography",
            "idna",
            "h11",
            "mcp.server.auth",
            "mcp.shared.auth",
            "mcp.server.streamable_http",
            "mcp.server._streamable_http_modern",
            "mcp.server.sse",
            "mcp.server.transport_security",
            "mcp.shared._httpx_utils",
            "mcp.client.sse",
            "mcp.client.streamable_http",
        ),
    ),
    ("opentelemetry", ("opentelemetry", "mcp.server._otel", "mcp.shared._otel")),
    ("the SDK's client (mcp/__init__ imports it)", ("mcp.client",)),
    ("pydantic", ("pydantic", "pydantic_core", "annotated_types", "typing_inspection", "typing_extensions")),
    ("the SDK's server and shared code", ("mcp",)),
    ("anyio", ("anyio",)),
]
OTHER = "standard library and the rest"
SDK = "python -c 'import mcp.server.mcpserver' (the SDK)"
NO_CACHE = "EFFECTD_NO_STARTUP_CACHE"
WARM = "effectd serve, with bytecode, warm start-up cache"
WARM_LIST = f"{WARM}: tools/list answered"
WARM_CALL = f"{WARM}: first tools/call answered"
BARE = "python -c pass"


def _message(id_: int, method: str, params: dict[str, Any] | None = None) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if id_:
        message["id"] = id_
    if params is not None:
        message["params"] = params
    return json.dumps(message).encode() + b"\n"


def _read_answer(proc: subprocess.Popen[bytes], id_: int) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if json.loads(line).get("id") == id_:
            return
    raise RuntimeError(f"effectd serve exited ({proc.wait()}) before answering request {id_}")


TICK = os.sysconf("SC_CLK_TCK")


def cpu_of(pid: int) -> float:
    """The CPU seconds (user + system) a live process has used, at the kernel's tick (10 ms)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


@contextmanager
def _serving(env: dict[str, str], workdir: str, db: str) -> Iterator[subprocess.Popen[bytes]]:
    """`effectd serve` spawned as a client spawns it; stdin closed and the process ended afterwards."""
    with subprocess.Popen(
        [effectd_bin(), "serve", "--db", f"{workdir}/{db}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=workdir,
        env=env,
    ) as proc:
        try:
            yield proc
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()


def _ask(proc: subprocess.Popen[bytes], id_: int, method: str, params: dict[str, Any], before: bytes = b"") -> None:
    """Writes the request (after `before`, a notification) at once, as a client does, and reads to its answer."""
    assert proc.stdin is not None
    proc.stdin.write(before + _message(id_, method, params))
    proc.stdin.flush()
    _read_answer(proc, id_)


HELLO = {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}
INITIALIZED = _message(0, "notifications/initialized")


def serve_once(env: dict[str, str]) -> tuple[float, float, float]:
    """Seconds from spawning `effectd serve` to its answer to `initialize`, to its answer to `tools/list`,
    and the CPU seconds it had used when it answered `initialize` (other work on the machine stretches the
    wall time far more than the CPU time)."""
    with tempfile.TemporaryDirectory() as workdir:
        t0 = time.perf_counter()
        with _serving(env, workdir, "journal.db") as proc:
            _ask(proc, 1, "initialize", HELLO)
            initialized = time.perf_counter() - t0
            cpu = cpu_of(proc.pid)
            _ask(proc, 2, "tools/list", {}, before=INITIALIZED)
            listed = time.perf_counter() - t0
    return initialized, listed, cpu


def warm_once(env: dict[str, str], workdir: str) -> tuple[float, float]:
    """With a warm start-up cache (the same command line, working directory and XDG_CACHE_HOME as the
    spawn that filled it): seconds from spawning `effectd serve` to its answer to `tools/list`, and to its
    answer to a first `tools/call` (`list_effects`), the client writing each request as soon as it may
    (`initialize`, then `tools/list` on its answer, then the call on that one's)."""
    t0 = time.perf_counter()
    with _serving(env, workdir, f"journal-{time.monotonic_ns()}.db") as proc:
        _ask(proc, 1, "initialize", HELLO)
        _ask(proc, 2, "tools/list", {}, before=INITIALIZED)
        listed = time.perf_counter() - t0
        _ask(proc, 3, "tools/call", {"name": "list_effects", "arguments": {}})
        called = time.perf_counter() - t0
    return listed, called


def python_once(code: str, env: dict[str, str]) -> tuple[float, float]:
    """Seconds `python -c code` takes from spawn to exit, and the CPU seconds it used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def sdk_groups(env: dict[str, str]) -> dict[str, float]:
    """Shares of the SDK import's self time (`-X importtime`) by group."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import mcp.server.mcpserver"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    rows: list[tuple[int, str, int]] = []  # (depth, module, self µs) in the order the imports finished
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _, name = line[len("import time:") :].split("|")
        rows.append(((len(name) - len(name.lstrip())) // 2, name.strip(), int(self_us)))
    # importtime prints a module after the modules it imported (one level deeper, just before it).
    parent: dict[int, int] = {}
    pending: list[int] = []
    for index, (depth, _, _) in enumerate(rows):
        while pending and rows[pending[-1]][0] > depth:
            parent[pending.pop()] = index
        pending.append(index)

    def own_group(name: str) -> str | None:
        return next((g for g, prefixes in GROUPS if any(name == p or name.startswith(f"{p}.") for p in prefixes)), None)

    def group_of(index: int) -> str:
        chain = [index]
        while chain[-1] in parent:
            chain.append(parent[chain[-1]])
        return next((g for i in chain if (g := own_group(rows[i][1])) is not None), OTHER)

    totals: dict[str, float] = {}
    for index, (_, _, self_us) in enumerate(rows):
        group = group_of(index)
        totals[group] = totals.get(group, 0.0) + self_us
    whole = sum(totals.values())
    return {group: value / whole for group, value in sorted(totals.items(), key=lambda item: -item[1])}


def main(argv: list[str] | None = None) -> int:
    args = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    args.add_argument("--runs", type=int, default=7)
    args.add_argument("--json", metavar="FILE", help="also write the figures as JSON ('-': stdout)")
    options = args.parse_args(argv)

    with (
        tempfile.TemporaryDirectory() as cache,
        tempfile.TemporaryDirectory() as startup_cache,
        tempfile.TemporaryDirectory() as workdir,
    ):
        # The cold rows without the start-up cache (the server's own start, as before it), the warm rows
        # with one this run filled: the same command line, working directory and cache directory.
        as_is = {**os.environ, NO_CACHE: "1"}
        cached = {k: v for k, v in as_is.items() if k != "PYTHONDONTWRITEBYTECODE"}
        cached["PYTHONPYCACHEPREFIX"] = cache
        warm = {k: v for k, v in cached.items() if k != NO_CACHE}
        warm["XDG_CACHE_HOME"] = startup_cache
        load = os.getloadavg()[0]
        serve_once(cached)  # warms the bytecode cache (every module of the serve path, the SDK's too)
        warm_once(warm, workdir)  # fills the start-up cache
        samples: dict[str, list[float]] = {}  # wall seconds
        cpu: dict[str, list[float]] = {}  # CPU seconds of the same runs
        cases = {
            "effectd serve: initialize answered": lambda: serve_once(as_is),
            "effectd serve, with bytecode: initialize answered": lambda: serve_once(cached),
            SDK: lambda: python_once("import mcp.server.mcpserver", as_is),
            "python -c 'import mcp_types.methods' (protocol types)": lambda: python_once(
                "import mcp_types.methods", as_is
            ),
            BARE: lambda: python_once("pass", as_is),
            WARM: lambda: warm_once(warm, workdir),
        }
        for _ in range(options.runs):
            for name, run in cases.items():
                value = run()
                if name == WARM:  # two wall times: to tools/list and to the first tools/call
                    samples.setdefault(WARM_LIST, []).append(value[0])
                    samples.setdefault(WARM_CALL, []).append(value[1])
                    continue
                samples.setdefault(name, []).append(value[0])
                cpu.setdefault(name, []).append(value[-1])
                if len(value) == 3:
                    samples.setdefault(name.replace("initialize", "tools/list"), []).append(value[1])
        phases: dict[str, list[float]] = {}
        with tempfile.TemporaryDirectory() as workdir:
            for round_ in range(options.runs):
                out = subprocess.run(
                    [sys.executable, "-c", PHASES, f"{workdir}/journal{round_}.db"],
                    env=cached,
                    capture_output=True,
                    text=True,
                    check=True,
                )
                for phase, seconds in json.loads(out.stdout).items():
                    phases.setdefault(phase, []).append(seconds)
        groups = sdk_groups(cached)
        load_after = os.getloadavg()[0]

    medians = {name: statistics.median(values) for name, values in samples.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu.items()}
    sdk, bare = medians[SDK], medians[BARE]
    print(f"== start-up, {options.runs} rounds, the cases in turn: wall median (min-max), ratio to the SDK; CPU median")
    for name, values in samples.items():
        used = f"  CPU {cpu_medians[name]:.2f} s" if name in cpu_medians else ""
        print(
            f"  {name:56} {medians[name]:.3f} s ({min(values):.2f}-{max(values):.2f})  {medians[name] / sdk:.2f}x{used}"
        )
    print(
        f"\n== issue 26's goals: tools/list {medians[WARM_LIST]:.3f} s after spawn (goal 0.15 s); the first tools/call "
        f"{medians[WARM_CALL] - sdk:+.3f} s after the SDK import's time (goal +0.1 s)"
    )
    print("\n== effectd serve in phases, inside one process, with bytecode (median)")
    for phase, values in phases.items():
        print(f"  {phase:60} {statistics.median(values):.3f} s")
    print(f"\n== the SDK import ({sdk - bare:.2f} s over bare python) by -X importtime, shares scaled to it")
    for group, share in groups.items():
        print(f"  {group:80} {share * 100:4.0f} %  ~{share * (sdk - bare):.2f} s")
    print(
        f"\npython {platform.python_version()}, {os.cpu_count()} CPUs, load {load:.2f} -> {load_after:.2f}, "
        f"PYTHONDONTWRITEBYTECODE={'set' if os.environ.get('PYTHONDONTWRITEBYTECODE') else 'unset'}\n"
        f"command: {' '.join([Path(sys.executable).name, *sys.argv])}"
    )
    if options.json:
        report = {
            "samples": samples,
            "medians": medians,
            "cpu_medians": cpu_medians,
            "phases": {phase: statistics.median(values) for phase, values in phases.items()},
            "sdk_import_shares": groups,
            "load": [load, load_after],
        }
        text = json.dumps(report, indent=2)
        if options.json == "-":
            print(text)
        else:
            Path(options.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
