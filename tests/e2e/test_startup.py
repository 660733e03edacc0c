"""`effectd serve` over stdio loads only what it needs to answer (issue 17: start-up time).

Every module imported before `initialize` is answered delays the answer, and a client that does not
wait for its MCP servers (Claude Code with `-p`) fails the calls it makes meanwhile. These tests
count modules, not seconds: a real `effectd serve` answers `initialize` and `tools/list` in a fresh
interpreter, then reports what it imported. The MCP SDK itself imports starlette, uvicorn and httpx
(its HTTP transports), so the yardstick is the SDK's own import in the same environment: effectd may
add its own modules, aiosqlite and the standard library, and nothing else. `benchmarks/bench_startup.py`
measures the time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import REPO

# Loaded only by what uses them: the HTTP daemon and its dashboard, the Ray runner, the Python API,
# the demo, the reading subcommands, the fake harness.
NOT_FOR_STDIO = (
    "effectd.http",
    "effectd.dashboard",
    "effectd.runner.ray_runner",
    "effectd.runner.ray_node",
    "effectd.runner.ray_guard",
    "effectd.api",
    "effectd.demo.main",
    "effectd.demo.flows",
    "effectd.demo.isolation",
    "effectd.demo.kit",
    "effectd.demo.sections",
    "effectd.cli.cancel",
    "effectd.cli.readers",
    "effectd.harness.fake",
    "ray",
    "playwright",
)
OURS = ("effectd", "aiosqlite", "anyio")  # anyio: its event loop backend, which `anyio.run` loads

SERVE_AND_REPORT = """
import json, sys
from effectd.cli.main import main
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as out:
    json.dump(sorted(sys.modules), out)
sys.exit(code)
"""

SDK_AND_REPORT = """
import json, sys
import anyio, mcp.server.mcpserver, mcp.server.stdio
print(json.dumps(sorted(sys.modules)))
"""


def _request(id_: int, method: str, params: dict[str, object]) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": id_, "method": method, "params": params}).encode() + b"\n"


def _answer(proc: subprocess.Popen[bytes], id_: int) -> dict[str, object]:
    assert proc.stdout is not None
    for line in proc.stdout:  # ends when the server exits: a hang is caught by pytest-timeout
        message: dict[str, object] = json.loads(line)
        if message.get("id") == id_:
            return message
    raise AssertionError(f"effectd serve exited (code {proc.wait()}) before answering request {id_}")


def modules_of_a_stdio_serve(tmp_path: Path) -> list[str]:
    """The modules a real `effectd serve` (stdio) had imported once it answered `initialize` and
    `tools/list` and its client left."""
    report = tmp_path / "modules.json"
    with subprocess.Popen(
        [sys.executable, "-c", SERVE_AND_REPORT, str(report), "serve", "--db", str(tmp_path / "journal.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("EFFECTD_")},  # the defaults: a local runner
    ) as proc:
        assert proc.stdin is not None
        try:
            hello = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
            proc.stdin.write(_request(1, "initialize", hello))
            proc.stdin.flush()
            assert "result" in _answer(proc, 1)
            proc.stdin.write(
                b'{"jsonrpc": "2.0", "method": "notifications/initialized"}\n' + _request(2, "tools/list", {})
            )
            proc.stdin.flush()
            tools = _answer(proc, 2)["result"]
            assert isinstance(tools, dict) and any(t["name"] == "dispatch_effect" for t in tools["tools"])
            proc.stdin.close()  # the client leaves: the server stops and writes its report
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    loaded: list[str] = json.loads(report.read_text())
    return loaded


@pytest.fixture(scope="module")
def serve_modules(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return modules_of_a_stdio_serve(tmp_path_factory.mktemp("startup"))


def test_a_stdio_serve_loads_no_http_dashboard_ray_api_demo_or_reading_subcommand(serve_modules):
    assert "effectd.engine.core" in serve_modules and "effectd.cli.main" in serve_modules  # the report is real
    loaded = [name for name in serve_modules if any(name == p or name.startswith(f"{p}.") for p in NOT_FOR_STDIO)]
    assert loaded == []


def test_a_stdio_serve_imports_nothing_beyond_the_sdk_but_effectd_aiosqlite_and_the_standard_library(
    serve_modules,
):
    sdk = set(
        json.loads(
            subprocess.run(
                [sys.executable, "-c", SDK_AND_REPORT], capture_output=True, check=True, cwd=REPO, timeout=120
            ).stdout
        )
    )
    assert "starlette" in sdk  # the yardstick: the SDK's import brings its HTTP stack (not effectd)
    extra = [
        name
        for name in serve_modules
        if name not in sdk
        and not {name.split(".")[0], name.split(".")[0].lstrip("_")} & sys.stdlib_module_names
        and name.split(".")[0] not in OURS
    ]
    assert extra == []
