"""`effectd demo`: the main job shown end to end, with no setup, no agent CLI and no network.

The demo writes a configuration with a fake Claude-Code-like harness (``effectd.harness.fake``), starts
``effectd serve`` over real stdio with the official MCP client, and shows, section by section:

1. four effects (two commands, two fake sub-agents) dispatched in the background, side by side;
2. their output streamed while they run (``stream_effect``, long-poll with a cursor);
3. their results taken as they complete (``await_group`` mode ``any`` with a cursor);
4. a runaway process tree that ignores SIGTERM, killed by ``cancel_effect``;
5. a diamond flow, when the server offers ``dispatch_flow``;
6. where the journal is, and the commands that read it.

Everything it starts is stopped before it returns; the work directory (journal, output, config) is kept
so the commands printed at the end can be tried.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TextIO

import anyio
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.shared.dispatcher import ProgressFnT

HARNESS = "fake-claude"
GROUP = "demo"
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "skipped"})


class DemoFailed(Exception):
    """Raised when something the demo sets out to show did not happen."""


@dataclass(frozen=True)
class Pace:
    """How long the demo's pretend work takes: a watchable pace, or a fast one for tests."""

    lint_s: float
    tests_s: float
    agent_delay_s: tuple[float, float]
    agent_steps: tuple[int, int]
    flow_s: tuple[float, float, float, float]  # fetch, lint, test, report
    runaway_watch_s: float  # how long the runaway is watched before it is cancelled
    runaway_grace_s: float = 0.5


NORMAL = Pace(
    lint_s=3.0,
    tests_s=4.0,
    agent_delay_s=(0.3, 0.4),
    agent_steps=(4, 3),
    flow_s=(0.5, 1.5, 1.5, 0.2),
    runaway_watch_s=1.2,
)
FAST = Pace(
    lint_s=0.6,
    tests_s=0.8,
    agent_delay_s=(0.1, 0.12),
    agent_steps=(2, 2),
    flow_s=(0.2, 0.5, 0.5, 0.0),
    runaway_watch_s=0.0,
)

# A pretend tool: prints progress lines over `seconds`, then leaves a JSON result for effectd.
WORKER = """\
import json, os, sys, time
template, steps, seconds, result = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
for step in range(1, steps + 1):
    time.sleep(seconds / steps)
    print(template.format(step=step, steps=steps), flush=True)
with open(os.environ["EFFECTD_RESULT_FILE"], "w") as out:
    out.write(result)
"""

# A process that will not stop politely: it ignores SIGTERM, and so does the grandchild it starts.
RUNAWAY = """\
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
grandchild = subprocess.Popen([sys.executable, "-c", stubborn])
print(f"pid {os.getpid()} ignores SIGTERM; grandchild pid {grandchild.pid} ignores it too", flush=True)
while True:
    time.sleep(0.5)
    print("still running...", flush=True)
"""


# --- the terminal ---------------------------------------------------------------------------------


class Screen:
    """Plain text for the terminal, with a little colour when stdout is one."""

    PALETTE = ("36", "35", "33", "34", "32", "96", "95")

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.colour = out.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
        self._labels: dict[str, str] = {}
        self.width = 12

    def paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour else text

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def section(self, title: str) -> None:
        self.say()
        self.say(self.paint(f"== {title} ==", "1"))

    def note(self, text: str) -> None:
        self.say(self.paint(f"   {text}", "2"))

    def good(self, text: str) -> str:
        return self.paint(text, "32")

    def bad(self, text: str) -> str:
        return self.paint(text, "31")

    def label(self, label: str) -> str:
        code = self._labels.setdefault(label, self.PALETTE[len(self._labels) % len(self.PALETTE)])
        return self.paint(f"{label:<{self.width}}", code)

    def status(self, status: str) -> str:
        return self.good(status) if status == "succeeded" else self.bad(status)


# --- talking to the server -----------------------------------------------------------------------


async def call(client: Client, tool: str, progress: ProgressFnT | None = None, **arguments: Any) -> dict[str, Any]:
    """Calls a tool; its structured result, or DemoFailed with the server's error text."""
    result = await client.call_tool(tool, arguments, progress_callback=progress)
    if result.is_error:
        text = " ".join(getattr(block, "text", "") for block in result.content or [])
        raise DemoFailed(f"{tool} was refused: {text}")
    data = result.structured_content
    if data is None:
        data = json.loads(getattr(result.content[0], "text", "null"))
    if not isinstance(data, dict):
        raise DemoFailed(f"{tool} returned {data!r}, not an object")
    return data


def seconds(iso: str | None) -> float:
    """An ISO 8601 timestamp as seconds since the epoch."""
    if not iso:
        raise DemoFailed("a finished effect has no start or finish time")
    return datetime.fromisoformat(iso).timestamp()


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a zombie is dead, only not yet reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def py(code: str, *args: str) -> list[str]:
    return [sys.executable, "-u", "-c", code, *args]


def agent_line(line: str) -> str | None:
    """One line of Claude's stream-json, condensed for a human (None: not worth showing)."""
    try:
        event = json.loads(line)
    except ValueError:
        return line
    if not isinstance(event, dict):
        return line
    kind = event.get("type")
    if kind == "system":
        return f"session started (model {event.get('model')})"
    if kind == "result":
        return f"final `result` event ({event.get('subtype')})"
    if kind != "assistant":
        return None
    shown = []
    for block in (event.get("message") or {}).get("content") or []:
        if block.get("type") == "text":
            shown.append(f"says: {block.get('text')}")
        elif block.get("type") == "tool_use":
            shown.append(f"calls {block.get('name')}: {(block.get('input') or {}).get('command', '...')}")
    return "; ".join(shown) or None


# --- 1-3: side by side, streamed, taken as they complete ----------------------------------------


async def side_by_side(client: Client, screen: Screen, pace: Pace) -> list[str]:
    """Sections 1 to 3; returns the ids of the effects it ran."""
    screen.section("1. Four effects dispatched in the background, side by side")
    jobs: list[tuple[str, dict[str, Any], str]] = [
        (
            "lint",
            {"command": py(WORKER, "checked {step}/{steps} modules", "5", str(pace.lint_s), '{"warnings": 0}')},
            "command: python (pretend linter)",
        ),
        (
            "unit-tests",
            {"command": py(WORKER, "passed {step}0 of {steps}0 tests", "7", str(pace.tests_s), '{"passed": 70}')},
            "command: python (pretend test run)",
        ),
        (
            "agent-docs",
            {
                "harness": HARNESS,
                "prompt": "Summarize what the README says effectd is for",
                "args": ["--steps", str(pace.agent_steps[0]), "--delay", str(pace.agent_delay_s[0])]
                + ["--answer", "effectd runs commands and sub-agents as supervised, journaled effects."]
                + ["--cost", "0.0123"],
            },
            f"harness: {HARNESS} (a fake sub-agent)",
        ),
        (
            "agent-review",
            {
                "harness": HARNESS,
                "prompt": "Review the last commit for bugs",
                "args": ["--steps", str(pace.agent_steps[1]), "--delay", str(pace.agent_delay_s[1])]
                + ["--answer", "No blocking issues; two nits in cli.py."]
                + ["--cost", "0.0087"],
            },
            f"harness: {HARNESS} (a fake sub-agent)",
        ),
    ]
    labels: dict[str, str] = {}
    agents: set[str] = set()
    for label, what, description in jobs:
        record = await call(client, "dispatch_effect", background=True, group=GROUP, label=label, **what)
        labels[record["effect_id"]] = label
        if "harness" in what:
            agents.add(record["effect_id"])
        screen.say(f"   {screen.label(label)} {record['effect_id']}  {record['status']:<8} {description}")
    screen.note(f'dispatch_effect(background=true, group="{GROUP}") returned at once for each')
    for _ in range(40):  # up to 2 s for all four to have started (they start within milliseconds)
        records = (await call(client, "list_effects", group=GROUP))["effects"]
        if all(r["status"] not in ("pending", "queued") for r in records):
            break
        await anyio.sleep(0.05)
    running = [f"{labels[r['effect_id']]} (pid {r['pid']})" for r in reversed(records) if r["status"] == "running"]
    screen.say(f"   running at once: {', '.join(running)}")

    screen.section("2. Output streamed while they run (stream_effect)  3. results as they complete (await_group)")
    screen.note("sub-agents print Claude Code's stream-json; shown condensed. `done` lines come from await_group")
    drained = {effect_id: anyio.Event() for effect_id in labels}
    finished: list[dict[str, Any]] = []
    streamed = 0

    async def follow(effect_id: str) -> None:
        """Long-polls the effect's output from a byte cursor until eof, printing each line with its label."""
        nonlocal streamed
        label, cursor, partial = labels[effect_id], 0, ""
        try:
            while True:
                chunk = await call(client, "stream_effect", effect_id=effect_id, cursor=cursor, wait_s=10)
                cursor = chunk["cursor"]
                *lines, partial = (partial + chunk["data"]).split("\n")
                if chunk["eof"] and partial:
                    lines, partial = [*lines, partial], ""
                for line in lines:
                    shown = agent_line(line) if effect_id in agents else line
                    if shown:
                        streamed += 1
                        screen.say(f"   {screen.label(label)} | {shown}")
                if chunk["eof"]:
                    return
        finally:
            drained[effect_id].set()

    async def take_completions() -> None:
        """await_group mode `any`: each call returns the effects that finished since the cursor."""
        cursor = 0
        while len(finished) < len(labels):
            answer = await call(client, "await_group", group=GROUP, mode="any", cursor=cursor, timeout_s=20)
            if answer["timed_out"]:
                raise DemoFailed(f"await_group timed out; still pending: {answer['pending']}")
            cursor = answer["cursor"]
            for record in answer["done"]:
                with anyio.fail_after(5):  # let its last output lines print first
                    await drained[record["effect_id"]].wait()
                finished.append(record)
                screen.say(f"   {screen.label(labels[record['effect_id']])} {describe(screen, record)}")

    with anyio.fail_after(40):
        async with anyio.create_task_group() as tg:
            for effect_id in labels:
                tg.start_soon(follow, effect_id)
            tg.start_soon(take_completions)

    if sorted(r["effect_id"] for r in finished) != sorted(labels):
        raise DemoFailed("await_group did not deliver each completion exactly once")
    if streamed == 0:
        raise DemoFailed("stream_effect returned no output while the effects ran")
    failed = [
        f"{labels[r['effect_id']]} ({r['status']}: {r.get('error')})" for r in finished if r["status"] != "succeeded"
    ]
    if failed:
        raise DemoFailed(f"effects that should have succeeded did not: {', '.join(failed)}")
    work = sum(float(r["duration_s"] or 0) for r in finished)
    wall = max(seconds(r["finished_at"]) for r in finished) - min(seconds(r["started_at"]) for r in finished)
    screen.say()
    screen.say(
        "   "
        + screen.good(f"side by side: {len(finished)} effects took {wall:.2f} s of wall time")
        + f" for {work:.2f} s of work (sum of duration_s): speedup {work / wall:.1f}x"
    )
    summary = (await call(client, "list_effects", group=GROUP)).get("summary") or {}
    tokens = summary.get("tokens") or {}
    screen.note(
        f"list_effects summary: {summary.get('by_status')}, sub-agent cost ${summary.get('cost_usd', 0):.4f}, "
        f"tokens in/out {tokens.get('input_tokens')}/{tokens.get('output_tokens')}"
    )
    return list(labels)


def describe(screen: Screen, record: dict[str, Any]) -> str:
    """One line for a finished effect: status, duration, and its result."""
    text = f"done: {screen.status(record['status'])} in {float(record['duration_s'] or 0):.2f} s"
    result = record.get("result")
    if record["kind"] == "harness" and isinstance(result, dict):
        text += f', answer "{result.get("answer")}", cost ${float(result.get("cost_usd") or 0):.4f}'
        text += f", {result.get('turns')} turns"
    elif result is not None:
        text += f", result {json.dumps(result)}"
    if record.get("error"):
        text += f", error: {record['error']}"
    return text


# --- 4: a runaway, cancelled ---------------------------------------------------------------------


async def runaway(client: Client, screen: Screen, pace: Pace) -> str:
    """Section 4: a process tree that ignores SIGTERM is killed; returns its effect id."""
    grace = pace.runaway_grace_s
    screen.section(f"4. A runaway that ignores SIGTERM, with a grandchild, cancelled (cancel_effect, grace_s={grace})")
    record = await call(client, "dispatch_effect", command=py(RUNAWAY), background=True, label="runaway", timeout_s=120)
    effect_id = str(record["effect_id"])
    cursor, text = 0, ""
    with anyio.fail_after(15):
        while (found := re.search(r"pid (\d+) ignores SIGTERM; grandchild pid (\d+) ignores it too", text)) is None:
            chunk = await call(client, "stream_effect", effect_id=effect_id, cursor=cursor, wait_s=5)
            cursor, text = chunk["cursor"], text + chunk["data"]
            if chunk["eof"]:
                raise DemoFailed(f"the runaway ended by itself ({chunk['status']}): {text!r}")
    pids = {"child": int(found.group(1)), "grandchild": int(found.group(2))}
    screen.say(f"   {screen.label('runaway')} | {found.group(0)}")
    with anyio.move_on_after(pace.runaway_watch_s):  # watch it a moment: it keeps going
        while True:
            chunk = await call(client, "stream_effect", effect_id=effect_id, cursor=cursor, wait_s=5)
            cursor = chunk["cursor"]
            for line in chunk["data"].splitlines():
                if line.strip():  # a print() under `python -u` writes its text and its newline separately
                    screen.say(f"   {screen.label('runaway')} | {line}")
    alive = ", ".join(f"{name} {pid} {'alive' if pid_alive(pid) else 'dead'}" for name, pid in pids.items())
    screen.note(f"before the cancel (/proc): {alive}")

    started = time.monotonic()
    record = await call(client, "cancel_effect", effect_id=effect_id, grace_s=grace, reason="demo: stop the runaway")
    took = time.monotonic() - started
    ended_by = record.get("signal")
    signame = signal.Signals(ended_by).name if ended_by else "none"
    screen.say(
        f"   cancel_effect returned after {took:.2f} s: status {screen.status(record['status'])}, "
        f"cancel_reason {record['cancel_reason']}, signal {ended_by} ({signame}), "
        f"cancel_message {record['cancel_message']!r}"
    )
    if record["status"] != "cancelled" or record["cancel_reason"] != "user":
        raise DemoFailed(f"the runaway was not cancelled by the user: {record['status']}, {record['cancel_reason']}")

    for _ in range(60):  # up to 3 s: pid 1 may be slow to reap an orphan (a zombie is already dead)
        if not any(pid_alive(pid) for pid in pids.values()):
            break
        await anyio.sleep(0.05)
    survivors = {name: pid for name, pid in pids.items() if pid_alive(pid)}
    for name, pid in pids.items():
        verdict = screen.bad("STILL ALIVE") if name in survivors else screen.good(f"gone (no live /proc/{pid})")
        screen.say(f"   pid {pid:<8} ({name:<10}) {verdict}")
    if survivors:
        for pid in survivors.values():  # the demo leaves nothing behind, even when effectd did
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise DemoFailed(f"processes of the cancelled runaway survived: {survivors}")
    return effect_id


# --- 5: a flow -----------------------------------------------------------------------------------


async def diamond_flow(client: Client, screen: Screen, pace: Pace) -> str:
    """Section 5: fetch -> (lint, test) -> report, each step starting as soon as its needs are met."""
    fetch_s, lint_s, test_s, report_s = pace.flow_s
    step = "import sys, time; time.sleep(float(sys.argv[1])); print(sys.argv[2])"
    steps = [
        {"id": "fetch", "command": py(step, str(fetch_s), "3 files changed"), "needs": []},
        {"id": "lint", "command": py(step, str(lint_s), "lint clean ({{steps.fetch.output}})"), "needs": ["fetch"]},
        {"id": "test", "command": py(step, str(test_s), "tests pass ({{steps.fetch.output}})"), "needs": ["fetch"]},
        {
            "id": "report",
            "command": py(step, str(report_s), "report: {{steps.lint.output}}; {{steps.test.output}}"),
            "needs": ["lint", "test"],
        },
    ]
    screen.section("5. A diamond flow: fetch -> (lint, test) -> report (dispatch_flow)")

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        screen.say(f"   progress notification: {message}")

    flow = await call(client, "dispatch_flow", on_progress, steps=steps, wait_s=30)
    with anyio.fail_after(30):
        while flow.get("status") == "running":
            await anyio.sleep(0.1)
            flow = await call(client, "poll_flow", flow_id=flow["flow_id"])
    rows = flow.get("steps") or []
    origin = min((seconds(s["started_at"]) for s in rows if s.get("started_at")), default=0.0)
    screen.say(f"   {'step':<8} {'needs':<12} {'starts':>8} {'took':>7}  status")
    for row in rows:
        start = f"+{seconds(row['started_at']) - origin:.2f} s" if row.get("started_at") else "-"
        took = f"{float(row['duration_s']):.2f} s" if row.get("duration_s") is not None else "-"
        needs = ", ".join(row.get("needs") or []) or "-"
        screen.say(f"   {row['step_id']:<8} {needs:<12} {start:>8} {took:>7}  {screen.status(row['status'])}")
    if flow.get("status") != "succeeded":
        raise DemoFailed(f"the flow ended {flow.get('status')}: {json.dumps(rows)}")
    report = next((row for row in rows if row["step_id"] == "report"), None)
    if report and report.get("effect_id"):
        tail = (await call(client, "poll_effect", effect_id=report["effect_id"]))["output_tail"].strip()
        screen.say(f"   report step printed: {tail!r}")
    wall, work = flow.get("wall_s"), flow.get("sum_step_s")
    if isinstance(wall, int | float) and isinstance(work, int | float) and wall > 0:
        screen.say(
            "   "
            + screen.good(f"flow {flow['flow_id']}: wall {wall:.2f} s")
            + f" for {work:.2f} s of steps: speedup {flow.get('speedup') or work / wall:.1f}x (lint and test overlap)"
        )
    return str(flow["flow_id"])


# --- the whole demo ------------------------------------------------------------------------------


def effectd_command() -> list[str]:
    """How to start effectd from this interpreter: the `effectd` script beside it, else `-m effectd.cli`."""
    beside = Path(sys.executable).parent / "effectd"
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-m", "effectd.cli"]


def shown_command() -> str:
    """`effectd` as the user should type it: the short name when it is on PATH, else a full path."""
    command = effectd_command()
    on_path = shutil.which("effectd")
    if on_path and os.path.realpath(on_path) == os.path.realpath(command[0]):
        return "effectd"
    return " ".join(command)


def write_config(work: Path) -> Path:
    """effectd.toml: python may run as a command; `fake-claude` runs the fake harness with Claude's parser."""
    config = work / "effectd.toml"
    quoted = json.dumps  # a JSON string is a valid TOML basic string
    config.write_text(
        "# Written by `effectd demo`.\n"
        "max_concurrency = 8\n"
        "default_grace_s = 1.0\n\n"
        "[commands]\n"
        f"allow = [{quoted(sys.executable)}]\n\n"
        f"[harness.{HARNESS}]\n"
        f'description = "A fake Claude Code (effectd.harness.fake): prints stream-json, no network"\n'
        f'command = [{quoted(sys.executable)}, "-m", "effectd.harness.fake", "{{prompt}}"]\n'
        'parser = "claude"\n'
        "timeout_s = 120\n\n"
        f"[harness.{HARNESS}.env]\n"
        'FAKE_HARNESS_DELAY = "0.2"\n'
        'FAKE_HARNESS_STEPS = "3"\n'
    )
    return config


async def run(
    screen: Screen, work: Path, config: Path, db: Path, pace: Pace, server_log: TextIO
) -> tuple[list[str], str | None]:
    """Starts the server over stdio, shows sections 1 to 5, stops it; returns the effect ids shown, and the flow id."""
    command = effectd_command()
    params = StdioServerParameters(
        command=command[0],
        args=[*command[1:], "serve", "--config", str(config), "--db", str(db)],
        cwd=str(work),
        # The stdio client passes only HOME, PATH and a few others unless told: hand the server our environment.
        env=dict(os.environ),
    )
    screen.note(f"starting: {shown_command()} serve --config {config} --db {db}  (stdio)")
    ids: list[str] = []
    flow_id: str | None = None
    async with Client(stdio_client(params, errlog=server_log), read_timeout_seconds=70) as client:
        tools = sorted(tool.name for tool in (await client.list_tools()).tools)
        info = client.server_info
        name, version = (info.name, info.version) if info else ("effectd", "")
        screen.note(f"connected to {name} {version}; its tools: {', '.join(tools)}")
        harnesses = (await call(client, "list_harnesses"))["harnesses"]
        fake = next((h for h in harnesses if h["name"] == HARNESS), None)
        if fake is None or not fake["available"]:
            raise DemoFailed(f"the harness profile {HARNESS} is missing or its executable is not found: {fake}")

        ids += await side_by_side(client, screen, pace)
        ids.append(await runaway(client, screen, pace))
        if "dispatch_flow" in tools:
            flow_id = await diamond_flow(client, screen, pace)
    return ids, flow_id


def journal_facts(db: Path) -> tuple[int, int, list[str]]:
    """Events and effects in the journal, and the effects not in a terminal status (there should be none)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        events = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        rows = conn.execute("SELECT effect_id, status FROM effects").fetchall()
    return int(events), len(rows), [f"{effect_id} {status}" for effect_id, status in rows if status not in TERMINAL]


def leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def main(fast: bool = False) -> int:
    """Runs the demo; 0 when everything it shows happened, 1 (with the reason on stderr) otherwise."""
    screen = Screen(sys.stdout)
    pace = FAST if fast else NORMAL
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="effectd-demo-"))
    config, db = write_config(work), work / "journal.db"
    log_path = work / "server.log"
    screen.say(screen.paint("effectd demo: effects run side by side, supervised and journaled", "1"))
    screen.note("no agent CLI and no network: the sub-agents are a fake Claude Code that prints stream-json")
    screen.note(f"work dir {work} (config effectd.toml, journal.db, server.log)")
    with open(log_path, "w") as server_log:
        try:
            ids, flow_id = anyio.run(run, screen, work, config, db, pace, server_log)
            events, effects, unfinished = journal_facts(db)
            if unfinished:
                raise DemoFailed(f"effects left unfinished in the journal: {unfinished}")
        except KeyboardInterrupt:
            print("\neffectd demo: interrupted", file=sys.stderr)
            return 130
        except BaseException as group:  # noqa: B036 - exception groups from task groups are unwrapped here
            exc = leaf(group)
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            print(f"\neffectd demo FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
            server_log.flush()
            tail = log_path.read_text(errors="replace").strip().splitlines()[-20:]
            if tail:
                print(f"last lines of the server's log ({log_path}):", file=sys.stderr)
                for line in tail:
                    print(f"  {line}", file=sys.stderr)
            print(f"journal and output kept in {work}", file=sys.stderr)
            return 1

    effectd = shown_command()
    screen.section("6. The journal")
    screen.say(f"   {db}: {events} events, {effects} effects, every one finished; the server has stopped")
    screen.say("   inspect it:")
    screen.say(f"     {effectd} ls --db {db}")
    screen.say(f"     {effectd} logs {ids[0]} --db {db}")
    screen.say(f"     {effectd} show {ids[2]} --db {db}")
    if flow_id:
        screen.say(f"     {effectd} show {flow_id} --db {db}")
    screen.say(f"     {effectd} journal --db {db}")
    screen.say(f"   remove it when done: rm -r {work}")
    screen.say()
    screen.say(screen.good(f"effectd demo OK in {time.monotonic() - started:.1f} s"))
    return 0
