"""The stdio wire misused for real, by a raw client on the server's pipes: stdout closed by the client
while an effect runs, and one 64 MiB line on stdin."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.processes import SLEEP, pid_alive, py, stdio_params

INITIALIZE = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}


def request(request_id: int, method: str, params: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}).encode() + b"\n"


def tool_call(request_id: int, tool: str, arguments: Any) -> bytes:
    return request(request_id, "tools/call", {"name": tool, "arguments": arguments})


def peak_rss_kib(pid: int) -> int:
    match = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    assert match
    return int(match.group(1))


@contextmanager
def raw_server(db: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`effectd serve` on pipes this test holds itself, initialized; killed if the test leaves it running."""
    params = stdio_params(db, "--allow-any-command")
    with subprocess.Popen(
        [params.command, *params.args],
        cwd=params.cwd,
        env=params.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:  # closes the pipes on the way out
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(request(1, "initialize", INITIALIZE))
            process.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
            process.stdin.flush()
            assert json.loads(process.stdout.readline())["id"] == 1
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.mark.parametrize("then_asks", [False, True], ids=["idle", "then-asks"])
def test_a_client_that_closes_stdout_makes_the_server_stop_its_effects_and_exit_0(
    tmp_path: Path, then_asks: bool
) -> None:
    db = tmp_path / "j.db"
    code = "import os, time; print(os.getpid(), flush=True); time.sleep(120)"
    with raw_server(db) as server:
        assert server.stdin is not None and server.stdout is not None and server.stderr is not None
        server.stdin.write(tool_call(2, "dispatch_effect", {"command": py(code), "background": True}))
        server.stdin.flush()
        record = json.loads(json.loads(server.stdout.readline())["result"]["content"][0]["text"])
        server.stdin.write(tool_call(3, "stream_effect", {"effect_id": record["effect_id"], "wait_s": 10}))
        server.stdin.flush()
        child = int(json.loads(json.loads(server.stdout.readline())["result"]["content"][0]["text"])["data"])
        server.stdout.close()  # the client stops reading; its stdin stays open
        if then_asks:  # an answer the server cannot deliver
            server.stdin.write(tool_call(4, "list_effects", {}))
            server.stdin.flush()
        code = server.wait(timeout=20)
        errors = server.stderr.read().decode()
    assert code == 0, errors
    assert "Traceback" not in errors, errors
    assert "the client closed its end of stdout" in errors
    assert not pid_alive(child)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        row = conn.execute("select status, cancel_reason from effects").fetchone()
    assert row == ("cancelled", "shutdown")


def test_a_64_mib_line_on_stdin_is_answered_in_linear_time(tmp_path: Path) -> None:
    with raw_server(tmp_path / "j.db") as server:
        assert server.stdin is not None and server.stdout is not None
        line = b'{"jsonrpc":"2.0","id":2,"method":"ping","params":{"pad":"' + b"a" * (64 << 20) + b'"}}\n'
        peak_before = peak_rss_kib(server.pid)
        began = time.monotonic()
        server.stdin.write(line)
        server.stdin.flush()
        answer = json.loads(server.stdout.readline())
        took = time.monotonic() - began
        peak_growth_mib = (peak_rss_kib(server.pid) - peak_before) / 1024
        server.stdin.write(tool_call(3, "dispatch_effect", {"command": py(SLEEP, "0")}))
        server.stdin.flush()
        after = json.loads(json.loads(server.stdout.readline())["result"]["content"][0]["text"])
        server.stdin.close()
        assert server.wait(timeout=20) == 0
    print(f"64 MiB line answered in {took:.2f} s; server peak RSS +{peak_growth_mib:.0f} MiB")
    assert answer == {"jsonrpc": "2.0", "id": 2, "result": {}}
    assert after["status"] == "succeeded"
    # Quadratic before (a copy of the whole buffer per 64 KiB read): 30 s and more on this machine.
    assert took < 10, f"a 64 MiB line took {took:.1f} s"
    # The line, its text (the SDK's stdio reader takes str) and the parsed message: about three copies.
    assert peak_growth_mib < 4 * 64, f"a 64 MiB line cost {peak_growth_mib:.0f} MiB"


@pytest.mark.anyio
async def test_a_write_to_a_stdout_nobody_reads_is_dropped_and_reported_once_instead_of_raising() -> None:
    from effectd.app import _Stdout

    read_end, write_end = os.pipe()
    os.close(read_end)
    closed: list[bool] = []
    try:
        stdout = _Stdout(write_end, lambda: closed.append(True))
        await stdout.write('{"jsonrpc":"2.0"}\n')
        await stdout.write('{"jsonrpc":"2.0"}\n')
    finally:
        os.close(write_end)
    assert closed == [True] and stdout.closed
