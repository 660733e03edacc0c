"""The server as an agent harness runs it: `effectd serve` over real stdio, stopped and killed for real."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from contextlib import suppress
from functools import partial

import anyio
import pytest
from mcp import Client

from tests.helpers.mcp import call, read_until
from tests.helpers.processes import SLEEP, effectd_bin, py, stdio_params, wait_gone

pytestmark = pytest.mark.anyio
ANY = "--allow-any-command"
PARENT = "import os, time; print(f'parent {os.getppid()} {os.getpid()} ready', flush=True); time.sleep(120)"


def rows(db, sql, *params):
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(sql, params)]


def running_effects(db) -> list[dict]:
    """The running effects of a database another process may still be creating."""
    try:
        return rows(db, "select * from effects where status = 'running'") if db.exists() else []
    except sqlite3.OperationalError:  # not migrated yet
        return []


async def test_progress_notifications_arrive_over_stdio_before_the_call_returns(tmp_path):
    lines: list[tuple[float, str]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        lines.append((time.monotonic(), message or ""))

    code = "import time\nfor i in range(4):\n    print(f'working {i}', flush=True); time.sleep(0.25)"
    async with Client(stdio_params(tmp_path / "j.db", ANY), read_timeout_seconds=70) as client:
        result = await client.call_tool("dispatch_effect", {"command": py(code)}, progress_callback=on_progress)
        returned = time.monotonic()
    assert not result.is_error and result.structured_content["status"] == "succeeded"
    assert [m for _, m in lines if m.startswith("working")][:1] == ["working 0"]
    assert lines[0][0] < returned - 0.3, "progress came only at the end"


async def test_closing_stdin_cancels_running_effects_with_reason_shutdown_and_exits_fast(tmp_path):
    db = tmp_path / "j.db"
    async with Client(stdio_params(db, ANY), read_timeout_seconds=70) as client:
        record = await call(client, "dispatch_effect", command=py(PARENT), background=True)
        text = await read_until(client, record["effect_id"], "ready")
        server_pid, child = (int(p) for p in text.split()[1:3])
        began = time.monotonic()
    took = time.monotonic() - began
    await wait_gone([server_pid, child])
    assert took < 2.0, f"the server took {took:.2f} s to stop after stdin closed"
    final = rows(db, "select status, cancel_reason from effects")[0]
    assert final == {"status": "cancelled", "cancel_reason": "shutdown"}


async def test_sigterm_stops_the_server_gracefully_and_keep_queued_keeps_waiting_effects(tmp_path):
    db = tmp_path / "j.db"
    params = stdio_params(db, ANY, "--max-concurrency", "1", "--keep-queued")
    with suppress(Exception, BaseExceptionGroup):
        async with Client(params, read_timeout_seconds=70) as client:
            record = await call(client, "dispatch_effect", command=py(PARENT), background=True)
            queued = await call(client, "dispatch_effect", command=py("print('later')"), background=True)
            text = await read_until(client, record["effect_id"], "ready")
            server_pid, child = (int(p) for p in text.split()[1:3])
            os.kill(server_pid, signal.SIGTERM)
            await wait_gone([server_pid, child])
    statuses = {r["effect_id"]: (r["status"], r["cancel_reason"]) for r in rows(db, "select * from effects")}
    assert statuses[record["effect_id"]] == ("cancelled", "shutdown")
    assert statuses[queued["effect_id"]] == ("queued", None)
    async with Client(stdio_params(db, ANY), read_timeout_seconds=70) as client:
        outcome = await call(client, "await_group", effect_ids=[queued["effect_id"]], timeout_s=20)
    assert outcome["done"][0]["status"] == "succeeded" and outcome["done"][0]["output_tail"] == "later\n"


GRANDPARENT = """
import os, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print("parent", os.getppid(), os.getpid(), grandchild.pid, flush=True)
print("partial output before the crash", flush=True)
time.sleep(120)
"""


async def test_after_a_sigkill_nothing_is_orphaned_and_the_restart_recovers_every_effect(tmp_path):
    db = tmp_path / "j.db"
    with suppress(Exception, BaseExceptionGroup):
        async with Client(stdio_params(db, ANY, "--max-concurrency", "1"), read_timeout_seconds=70) as client:
            running = await call(client, "dispatch_effect", command=py(GRANDPARENT), background=True, group="crash")
            queued = await call(
                client, "dispatch_effect", command=py("print('ran later')"), background=True, group="crash"
            )
            pending = await call(
                client, "dispatch_effect", command=py("pass"), background=True, depends_on=[running["effect_id"]]
            )
            text = await read_until(client, running["effect_id"], "before the crash")
            server_pid, child, grandchild = (int(p) for p in text.split()[1:4])
            os.kill(server_pid, signal.SIGKILL)
            await wait_gone([server_pid, child])  # the parent-death signal took the child with the server
    async with Client(stdio_params(db, ANY), read_timeout_seconds=70) as client:
        await wait_gone([grandchild])  # the new server killed what the child left behind
        outcome = await call(client, "await_group", group="crash", timeout_s=20)
        records = {r["effect_id"]: r for r in outcome["done"]}
        skipped = await call(client, "await_group", effect_ids=[pending["effect_id"]], timeout_s=20)
        output = await call(client, "stream_effect", effect_id=running["effect_id"])
    assert records[running["effect_id"]]["status"] == "failed"
    assert records[running["effect_id"]]["error"] == "interrupted"
    assert records[queued["effect_id"]]["status"] == "succeeded"
    assert skipped["done"][0]["status"] == "skipped"
    assert "partial output before the crash" in output["data"] and output["eof"] is True
    terminal = rows(
        db,
        "select effect_id, count(*) as n from events where type in "
        "('EFFECT_RESOLVED', 'EFFECT_FAILED', 'EFFECT_CANCELLED', 'EFFECT_SKIPPED') group by effect_id",
    )
    assert len(terminal) == 3 and all(r["n"] == 1 for r in terminal)


async def test_the_command_line_reads_the_journal(tmp_path):
    db = tmp_path / "j.db"
    async with Client(stdio_params(db, ANY), read_timeout_seconds=70) as client:
        record = await call(client, "dispatch_effect", command=py("print('from the effect')"), label="greeting")
        queued = await call(client, "dispatch_effect", command=py(SLEEP, "30"), background=True)
        cancelled = await anyio.run_process(
            [effectd_bin(), "cancel", queued["effect_id"], "--reason", "cli", "--db", str(db)], check=False
        )
    assert cancelled.returncode == 0, cancelled.stderr

    async def run(*args: str) -> str:
        with anyio.fail_after(30):
            done = await anyio.run_process([effectd_bin(), *args, "--db", str(db)], check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout.decode()

    listing = await run("ls")
    assert "greeting" in listing and "cancelled" in listing
    assert '"status": "succeeded"' in await run("show", record["effect_id"])
    assert await run("logs", record["effect_id"]) == "from the effect\n"
    journal = await run("journal")
    for event in ("RUN_CREATED", "EFFECT_REQUESTED", "EFFECT_STARTED", "EFFECT_RESOLVED", "EFFECT_CANCELLED"):
        assert event in journal
    unknown = await anyio.run_process([effectd_bin(), "show", "eff_nosuch", "--db", str(db)], check=False)
    assert unknown.returncode == 1


async def test_the_cancel_command_without_a_live_server_cancels_a_waiting_effect_in_the_journal(tmp_path):
    db = tmp_path / "j.db"
    with suppress(Exception, BaseExceptionGroup):
        async with Client(
            stdio_params(db, ANY, "--max-concurrency", "1", "--keep-queued"), read_timeout_seconds=70
        ) as c:
            running = await call(c, "dispatch_effect", command=py(PARENT), background=True)
            queued = await call(c, "dispatch_effect", command=py("pass"), background=True)
            text = await read_until(c, running["effect_id"], "ready")
            os.kill(int(text.split()[1]), signal.SIGTERM)
            await wait_gone([int(text.split()[1])])
    with anyio.fail_after(30):
        done = await anyio.run_process([effectd_bin(), "cancel", queued["effect_id"], "--db", str(db)], check=False)
    assert done.returncode == 2
    assert rows(db, "select status from effects where effect_id = ?", queued["effect_id"]) == [{"status": "cancelled"}]


async def test_stdin_closing_under_a_foreground_call_ends_its_effect_as_shutdown_not_client_cancelled(tmp_path):
    import json

    db = tmp_path / "j.db"
    messages = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "dispatch_effect", "arguments": {"command": py(PARENT), "wait_s": 50}},
        },
    ]
    async with await anyio.open_process(
        [effectd_bin(), "serve", "--db", str(db), ANY], stdin=-1, stdout=-1, stderr=-1
    ) as server:
        assert server.stdin is not None and server.stdout is not None
        await server.stdin.send("".join(json.dumps(m) + "\n" for m in messages).encode())
        with anyio.fail_after(20):
            # Another process's database has no event to wait on: poll it, within the bound.
            while not running_effects(db):  # noqa: ASYNC110
                await anyio.sleep(0.05)
        await server.stdin.aclose()
        with anyio.fail_after(10):
            answers = (await server.stdout.receive(1 << 20)).decode()
            while '"id":2' not in answers.replace(" ", ""):
                answers += (await server.stdout.receive(1 << 20)).decode()
            await server.wait()
    final = rows(db, "select status, cancel_reason from effects")[0]
    assert final == {"status": "cancelled", "cancel_reason": "shutdown"}
    assert '"shutdown"' in answers, "the call in flight did not answer with its record"


STUBBORN = (
    "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print(f'parent {os.getppid()} {os.getpid()} ready', flush=True); time.sleep(120)"
)


async def test_a_cancel_under_way_when_the_server_dies_stands_after_the_restart(tmp_path):
    db = tmp_path / "j.db"
    with suppress(Exception, BaseExceptionGroup):
        async with Client(stdio_params(db, ANY), read_timeout_seconds=70) as client:
            record = await call(client, "dispatch_effect", command=py(STUBBORN), background=True)
            text = await read_until(client, record["effect_id"], "ready")
            server_pid, child = (int(p) for p in text.split()[1:3])
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    partial(client.call_tool, "cancel_effect", {"effect_id": record["effect_id"], "grace_s": 30})
                )
                with anyio.fail_after(10):
                    while not rows(db, "select 1 from events where type = 'EFFECT_CANCEL_REQUESTED'"):  # noqa: ASYNC110
                        await anyio.sleep(0.02)
                os.kill(server_pid, signal.SIGKILL)
                await wait_gone([server_pid, child])
    async with Client(stdio_params(db, ANY), read_timeout_seconds=70) as client:
        final = await call(client, "poll_effect", effect_id=record["effect_id"])
    assert (final["status"], final["cancel_reason"], final["error"]) == ("cancelled", "user", None)


async def test_logs_and_journal_follow_a_live_server(tmp_path):
    db = tmp_path / "j.db"
    code = "import time\nfor i in range(5):\n    print(f'line {i}', flush=True); time.sleep(0.2)"
    async with Client(stdio_params(db, ANY), read_timeout_seconds=70) as client:
        record = await call(client, "dispatch_effect", command=py(code), background=True)
        async with await anyio.open_process(
            [effectd_bin(), "journal", "--follow", "--db", str(db)], stdout=-1
        ) as journal:
            with anyio.fail_after(20):
                logs = await anyio.run_process(
                    [effectd_bin(), "logs", record["effect_id"], "--follow", "--db", str(db)], check=True
                )
                assert journal.stdout is not None
                seen = b""
                while b"EFFECT_RESOLVED" not in seen:
                    seen += await journal.stdout.receive()
            journal.terminate()
    assert logs.stdout.decode() == "".join(f"line {i}\n" for i in range(5))
    assert b"EFFECT_STARTED" in seen
