"""The demo's sections 1 to 5: effects side by side, streamed and collected; a runaway killed; a flow."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from contextlib import suppress
from typing import Any

import anyio
from mcp import Client

from effectd.demo.kit import (
    GROUP,
    HARNESS,
    DemoFailed,
    Pace,
    Screen,
    agent_line,
    call,
    describe,
    pid_alive,
    py,
    seconds,
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
