"""Streamable HTTP: a real `effectd serve --http` process, the official MCP client, the token and Origin gates,
a refused public bind, and a graceful stop on SIGTERM. `serving` (an in-process server on a free port) is
shared with the dashboard and resource tests."""

from __future__ import annotations

import ast
import inspect
import os
import signal
import socket
import sqlite3
import subprocess
import time
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

import effectd.http
from effectd.engine.core import Engine
from tests.helpers.http import TOKEN, WAIT_FOR_FILE, free_port, http_client, serving, sse_events
from tests.helpers.mcp import call, read_until
from tests.helpers.processes import effectd_bin, pid_alive, py

pytestmark = pytest.mark.anyio


STARTED_THEN_SLEEP = "import time; print('started', flush=True); time.sleep(60)"


# --- an in-process server (used by the dashboard and resource tests too) -------------------------


# --- a real `effectd serve --http` process --------------------------------------------------------


# --- tests ---------------------------------------------------------------------------------------


async def test_tools_work_over_streamable_http(daemon_factory: Any) -> None:
    daemon = daemon_factory()
    async with http_client(daemon.url) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"dispatch_effect", "poll_effect", "await_group", "stream_effect", "cancel_effect"} <= names
        record = await call(client, "dispatch_effect", command=py("print('over http')"))
    assert record["status"] == "succeeded" and record["output_tail"] == "over http\n"
    # Where it serves is news, not a warning: told on stderr at INFO.
    assert f"effectd: INFO serving MCP at {daemon.url}/mcp" in daemon.stderr()
    assert "WARNING" not in daemon.stderr()


async def test_two_clients_see_each_others_effects(daemon_factory: Any, tmp_path: Path) -> None:
    daemon = daemon_factory()
    gate = tmp_path / "gate"
    async with http_client(daemon.url) as first, http_client(daemon.url) as second:
        started = await call(first, "dispatch_effect", command=py(WAIT_FOR_FILE, str(gate)), background=True, group="g")
        seen = await call(second, "poll_effect", effect_id=started["effect_id"])
        assert seen["effect_id"] == started["effect_id"] and seen["status"] in ("queued", "running")
        listed = await call(second, "list_effects", group="g")
        assert [e["effect_id"] for e in listed["effects"]] == [started["effect_id"]]
        gate.touch()
        done = await call(second, "await_group", group="g", timeout_s=30)
    assert done["complete"] and done["done"][0]["status"] == "succeeded"
    assert done["done"][0]["output_tail"] == "started\nreleased\n"


async def test_an_effect_outlives_the_client_that_started_it(daemon_factory: Any, tmp_path: Path) -> None:
    daemon = daemon_factory()
    gate = tmp_path / "gate"
    async with http_client(daemon.url) as first:
        started = await call(first, "dispatch_effect", command=py(WAIT_FOR_FILE, str(gate)), background=True)
    # The first client is gone (its session deleted); the effect goes on and another client sees it end.
    async with http_client(daemon.url) as second:
        still = await call(second, "poll_effect", effect_id=started["effect_id"])
        assert still["status"] in ("queued", "running") and still["cancel_reason"] is None
        gate.touch()
        done = await call(second, "await_group", effect_ids=[started["effect_id"]], timeout_s=30)
    assert done["done"][0]["status"] == "succeeded"


async def test_a_missing_or_wrong_token_gets_401(daemon_factory: Any) -> None:
    daemon = daemon_factory("--token", TOKEN)
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    accept = {"Accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient(timeout=10) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            answer = await http.post(f"{daemon.url}/mcp", json=initialize, headers={**accept, **headers})
            assert answer.status_code == 401, answer.text
            assert answer.headers["www-authenticate"].startswith("Bearer")
            for path in ("/api/effects", "/api/events"):
                assert (await http.get(f"{daemon.url}{path}", headers=headers)).status_code == 401
        authorized = await http.get(f"{daemon.url}/api/effects", headers={"Authorization": f"Bearer {TOKEN}"})
        assert authorized.status_code == 200 and authorized.json()["effects"] == []
        # The page itself holds no data: it loads without the token and asks for it.
        page = await http.get(f"{daemon.url}/")
        assert page.status_code == 200 and "effectd" in page.text
    async with http_client(daemon.url, TOKEN) as client:
        record = await call(client, "dispatch_effect", command=py("print('authorized')"))
    assert record["status"] == "succeeded"


async def test_the_token_can_come_from_the_environment(daemon_factory: Any) -> None:
    daemon = daemon_factory(env={"EFFECTD_TOKEN": TOKEN})
    async with httpx2.AsyncClient(timeout=10) as http:
        assert (await http.get(f"{daemon.url}/api/effects")).status_code == 401
        ok = await http.get(f"{daemon.url}/api/effects", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200


async def test_a_bad_origin_or_host_is_refused(daemon_factory: Any) -> None:
    daemon = daemon_factory()
    port = daemon.url.rsplit(":", 1)[1]
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    accept = {"Accept": "application/json, text/event-stream"}
    async with httpx2.AsyncClient(timeout=10) as http:
        for origin in ("http://evil.example", f"http://evil.example:{port}", "http://127.0.0.1:1", "null"):
            refused = await http.post(f"{daemon.url}/mcp", json=ping, headers={**accept, "Origin": origin})
            assert refused.status_code == 403, (origin, refused.text)
            assert (await http.get(f"{daemon.url}/api/effects", headers={"Origin": origin})).status_code == 403
        # DNS rebinding: a page of another name that resolves to 127.0.0.1 sends its own Host.
        rebound = await http.get(f"{daemon.url}/api/effects", headers={"Host": f"evil.example:{port}"})
        assert rebound.status_code == 421
        for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
            allowed = await http.get(f"{daemon.url}/api/effects", headers={"Origin": origin})
            assert allowed.status_code == 200, (origin, allowed.text)
        # Missing Origin (a non-browser client) is fine.
        assert (await http.get(f"{daemon.url}/api/effects")).status_code == 200


def test_a_public_bind_without_a_token_refuses_to_start(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            effectd_bin(),
            "serve",
            "--http",
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
            "--db",
            str(tmp_path / "j.db"),
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "EFFECTD_TOKEN"},
    )
    assert done.returncode == 2, done.stderr
    assert "refusing to serve HTTP on 0.0.0.0 without a token" in done.stderr and "--token" in done.stderr
    assert not (tmp_path / "j.db").exists()  # refused before anything was opened


def test_a_port_in_use_is_refused_with_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run(
            [effectd_bin(), "serve", "--http", "--port", str(port), "--db", str(tmp_path / "j.db")],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr


async def test_sigterm_stops_the_server_and_cancels_its_effects_with_reason_shutdown(daemon_factory: Any) -> None:
    daemon = daemon_factory()
    # A 2025-protocol client (with its session and standing GET stream) is connected too: it must not hold
    # the stop up either.
    async with http_client(daemon.url) as client, http_client(daemon.url, mode="legacy") as legacy:
        assert legacy.protocol_version.startswith("2025")
        record = await call(client, "dispatch_effect", command=py(STARTED_THEN_SLEEP), background=True, grace_s=2)
        await read_until(client, record["effect_id"], "started")
        pid = (await call(client, "poll_effect", effect_id=record["effect_id"]))["pid"]
        assert pid is not None and pid_alive(pid)
        # An open live stream must not hold the stop up.
        async with httpx2.AsyncClient(timeout=httpx2.Timeout(10, read=60)) as http:
            async with http.stream("GET", f"{daemon.url}/api/events") as events:
                assert events.status_code == 200
                began = time.monotonic()
                daemon.proc.send_signal(signal.SIGTERM)
                code = await anyio.to_thread.run_sync(partial(daemon.proc.wait, 20))
                took = time.monotonic() - began
    assert code == 0, daemon.stderr()
    assert took < 8, f"the stop took {took:.1f} s"
    assert not pid_alive(pid)
    with sqlite3.connect(f"file:{daemon.db}?mode=ro", uri=True) as db:
        status, reason = db.execute(
            "SELECT status, cancel_reason FROM effects WHERE effect_id = ?", (record["effect_id"],)
        ).fetchone()
    assert (status, reason) == ("cancelled", "shutdown")
    log = daemon.stderr()
    assert "SIGTERM: stopping" in log and "Traceback" not in log, log


async def test_a_foreground_call_in_flight_at_sigterm_returns_its_effect_cancelled_for_shutdown(
    daemon_factory: Any,
) -> None:
    """Regression: the HTTP layer was torn down before the effects, so a waiting call was cut and its
    effect ended `client_cancelled`; now the effects stop first and the call gets its record back."""
    daemon = daemon_factory()
    started = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if message == "started":
            started.set()

    async with http_client(daemon.url) as client:
        await client.list_tools()
        result: dict[str, Any] = {}

        async def foreground() -> None:
            answer = await client.call_tool(
                "dispatch_effect", {"command": py(STARTED_THEN_SLEEP), "wait_s": 50}, progress_callback=on_progress
            )
            result.update(answer.structured_content or {})

        async with anyio.create_task_group() as tg:
            tg.start_soon(foreground)
            with anyio.fail_after(20):
                await started.wait()
            daemon.proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(20):
                code = await anyio.to_thread.run_sync(partial(daemon.proc.wait, 20))
    assert code == 0
    assert result["status"] == "cancelled" and result["cancel_reason"] == "shutdown", result
    assert "Traceback" not in daemon.stderr(), daemon.stderr()


# --- the dashboard's JSON API and event streams (in process) --------------------------------------


async def test_the_api_lists_filters_and_reads_effects(engine: Engine) -> None:
    async with serving(engine) as url, http_client(url) as client, httpx2.AsyncClient(base_url=url) as http:
        one = await call(client, "dispatch_effect", command=py("print('one')"), group="a", label="first")
        two = await call(client, "dispatch_effect", command=py("import sys; sys.exit(4)"), group="b")
        listed = (await http.get("/api/effects", params={"group": "a"})).json()["effects"]
        assert [row["effect_id"] for row in listed] == [one["effect_id"]]
        assert "output_tail" not in listed[0] and listed[0]["label"] == "first" and listed[0]["cost_usd"] is None
        failed = (await http.get("/api/effects", params={"status": "failed,cancelled"})).json()["effects"]
        assert [row["effect_id"] for row in failed] == [two["effect_id"]]
        full = (await http.get(f"/api/effects/{one['effect_id']}")).json()
        assert full["output_tail"] == "one\n" and full["status"] == "succeeded"
        chunk = (await http.get(f"/api/effects/{one['effect_id']}/output", params={"cursor": 1})).json()
        assert chunk == {"effect_id": one["effect_id"], "data": "ne\n", "cursor": 4, "eof": True, "status": "succeeded"}
        groups = {g["group"]: g for g in (await http.get("/api/groups")).json()["groups"]}
        assert groups["a"]["effects"] == 1 and groups["b"]["failed"] == 1
        runs = (await http.get("/api/runs")).json()["runs"]
        assert runs[0]["run_id"] == one["run_id"] and runs[0]["effects"] == 2
        unknown = await http.get("/api/effects/eff_nope")
        assert unknown.status_code == 404 and "eff_nope" in unknown.json()["error"]
        bad = await http.get("/api/effects", params={"status": "done"})
        assert bad.status_code == 400 and "unknown status done" in bad.json()["error"]
        assert (await http.get("/api/effects", params={"limit": "lots"})).status_code == 400
        assert (await http.get("/api/flows/flw_nope")).status_code == 404


async def test_a_number_out_of_range_is_refused_with_its_bounds_printed_as_integers(engine: Engine) -> None:
    async with serving(engine) as url, http_client(url) as client, httpx2.AsyncClient(base_url=url) as http:
        output = f"/api/effects/{(await call(client, 'dispatch_effect', command=py('pass')))['effect_id']}/output"
        cases = [
            ({"max_bytes": "2000000"}, "`max_bytes` must be between 1 and 1048576, not 2000000"),
            ({"cursor": "-1"}, "`cursor` must be between 0 and 4611686018427387904 (2**62), not -1"),
            ({"wait_s": "99.5"}, "`wait_s` must be between 0 and 55, not 99.5"),
        ]
        for params, message in cases:
            refused = await http.get(output, params=params)
            assert (refused.status_code, refused.json()["error"]) == (400, message)
        refused = await http.get("/api/effects", params={"limit": "5000000"})
        assert refused.json()["error"] == "`limit` must be between 1 and 5000, not 5000000"


async def test_the_event_stream_sends_a_snapshot_then_the_rows_that_changed(engine: Engine, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    async with serving(engine) as url, http_client(url) as client, httpx2.AsyncClient(base_url=url) as http:
        before = await call(client, "dispatch_effect", command=py("print('before')"))
        async with http.stream("GET", "/api/events", timeout=httpx2.Timeout(10, read=60)) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = sse_events(response)
            name, snapshot = await anext(events)
            assert name == "snapshot" and [row["effect_id"] for row in snapshot["effects"]] == [before["effect_id"]]
            record = await call(client, "dispatch_effect", command=py(WAIT_FOR_FILE, str(gate)), background=True)
            seen: list[str] = []
            with anyio.fail_after(30):
                async for name, data in events:
                    assert name == "effects"
                    statuses = [row["status"] for row in data["effects"] if row["effect_id"] == record["effect_id"]]
                    seen.extend(statuses)
                    if "running" in statuses:
                        gate.touch()
                    if "succeeded" in statuses:
                        break
    assert seen[-1] == "succeeded" and "running" in seen


async def test_cancelling_through_the_api_kills_the_effect(engine: Engine) -> None:
    async with serving(engine) as url, http_client(url) as client, httpx2.AsyncClient(base_url=url) as http:
        record = await call(client, "dispatch_effect", command=py(STARTED_THEN_SLEEP), background=True, group="g")
        await read_until(client, record["effect_id"], "started")
        pid = (await call(client, "poll_effect", effect_id=record["effect_id"]))["pid"]
        answer = await http.post(f"/api/effects/{record['effect_id']}/cancel", timeout=30)
        assert answer.status_code == 200
        cancelled = answer.json()
        assert (cancelled["status"], cancelled["cancel_reason"]) == ("cancelled", "user")
        assert cancelled["cancel_message"] == "from the dashboard" and not pid_alive(pid)
        again = (await http.post("/api/groups/g/cancel", timeout=30)).json()
        assert again["cancelled"] == [] and again["effects"][0]["status"] == "cancelled"
        assert (await http.post("/api/groups/nothing-here/cancel")).status_code == 404


async def test_the_output_stream_sends_the_output_then_the_end(engine: Engine, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    async with serving(engine) as url, http_client(url) as client, httpx2.AsyncClient(base_url=url) as http:
        record = await call(client, "dispatch_effect", command=py(WAIT_FOR_FILE, str(gate)), background=True)
        text = ""
        path = f"/api/effects/{record['effect_id']}/output/stream"
        async with http.stream("GET", path, timeout=httpx2.Timeout(10, read=60)) as response:
            with anyio.fail_after(30):
                async for name, data in sse_events(response):
                    if name == "output":
                        text += data["data"]
                        if "started" in text:
                            gate.touch()
                    else:
                        assert name == "end" and data == {"cursor": len(text), "status": "succeeded"}
                        break
    assert text == "started\nreleased\n"


# --- the HTTP package's boundaries ---------------------------------------------------------------


def test_the_http_package_reaches_the_engine_only_through_its_public_api() -> None:
    """The HTTP front-end translates requests into `Engine` calls: no SQL, no engine internals (the
    supervisor, journal, flows or feed), and no private attribute of anything but itself (the MCP SDK's
    private parts are reached through `effectd.protocol.compat`)."""
    declared = [name for klass in Engine.__mro__ for name in inspect.get_annotations(klass)]  # `approvals`
    public = {name for name in [*dir(Engine), *declared] if not name.startswith("_")}
    internals = ("sqlite3", "aiosqlite", "effectd.journal", "effectd.supervisor", "effectd.runner", "effectd.flows")
    modules = sorted(Path(effectd.http.__file__).parent.glob("*.py"))
    assert len(modules) > 1
    for module in modules:
        for node in ast.walk(ast.parse(module.read_text(), str(module))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                for name in names:
                    assert not name.startswith(internals), f"{module.name}:{node.lineno} imports {name}"
            elif isinstance(node, ast.Attribute):
                where = f"{module.name}:{node.lineno} uses .{node.attr}"
                owner = node.value
                if (isinstance(owner, ast.Name) and owner.id == "engine") or (
                    isinstance(owner, ast.Attribute) and owner.attr == "engine"
                ):
                    assert node.attr in public, f"{where} of the engine, which is not its public API"
                private = node.attr.startswith("_") and not node.attr.startswith("__")
                assert not private or (isinstance(owner, ast.Name) and owner.id == "self"), where
