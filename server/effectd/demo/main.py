"""`effectd demo`: the main job shown end to end, with no setup, no agent CLI and no network.

The demo writes a configuration with a fake Claude-Code-like harness (``effectd.harness.fake``), starts
``effectd serve`` over real stdio with the official MCP client, and shows, section by section:

1. four effects (two commands, two fake sub-agents) dispatched in the background, side by side;
2. their output streamed while they run (``stream_effect``, long-poll with a cursor);
3. their results taken as they complete (``await_group`` mode ``any`` with a cursor);
4. a runaway process tree that ignores SIGTERM, killed by ``cancel_effect``;
5. a diamond flow, when the server offers ``dispatch_flow``;
6. fake sub-agents on one scratch git repository, each in a worktree of its own (``demo_isolation``);
7. agent work as a flow: plan, one sub-agent per planned file (``for_each``), a review that fails on
   purpose, then the flow resumed (``resume``): only the review runs again (``demo_flows``);
8. where the journal is, and the commands that read it.

Everything it starts is stopped before it returns; the work directory (journal, output, config) is kept
so the commands printed at the end can be tried. Sections 1 to 5 are in ``demo_sections``, 6 in
``demo_isolation``; what they share (pace, terminal, tool calls) in ``demo_kit``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

import anyio
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from effectd.demo.flows import fanout_and_resume
from effectd.demo.isolation import isolation
from effectd.demo.kit import FAST, HARNESS, NORMAL, DemoFailed, Pace, Screen, call
from effectd.demo.sections import diamond_flow, runaway, side_by_side
from effectd.journal.reader import JournalReader

TERMINAL = frozenset({"succeeded", "failed", "cancelled", "skipped"})


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
        isolated, _ = await isolation(client, screen, pace, work)
        ids += isolated
        if "dispatch_flow" in tools:
            flow_id = await fanout_and_resume(client, screen, pace)
    return ids, flow_id


def journal_facts(db: Path) -> tuple[int, int, list[str]]:
    """Events and effects in the journal, and the effects not in a terminal status (there should be none)."""
    reader = JournalReader(db)
    rows = reader.effects()
    unfinished = [f"{row['effect_id']} {row['status']}" for row in rows if row["status"] not in TERMINAL]
    return reader.event_count(), len(rows), unfinished


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
    screen.section("8. The journal")
    screen.say(f"   {db}: {events} events, {effects} effects, every one finished; the server has stopped")
    screen.say("   inspect it:")
    screen.say(f"     {effectd} ls --db {db}")
    screen.say(f"     {effectd} logs {ids[0]} --db {db}")
    screen.say(f"     {effectd} show {ids[2]} --db {db}")
    if flow_id:
        screen.say(f"     {effectd} show {flow_id} --db {db}")
    screen.say(f"     {effectd} journal --db {db}")
    screen.say(f"     {effectd} worktrees --db {db}")
    screen.say(f"   remove it when done: rm -r {work}")
    screen.say()
    screen.say(screen.good(f"effectd demo OK in {time.monotonic() - started:.1f} s"))
    return 0
