"""The 2025-11-25 task form on legacy connections (`params.task`, as VS Code sends it), over streamable HTTP
with raw JSON-RPC: the official Python client validates a `tools/call` answer as a `CallToolResult` on
that revision, so it cannot read a `CreateTaskResult` there."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from effectd.engine.core import Engine
from tests.helpers.http import WAIT_FOR_FILE, serving
from tests.helpers.processes import CHILD_WITH_GRANDCHILD, pid_alive, py

pytestmark = pytest.mark.anyio
LEGACY = "2025-11-25"


class LegacyWire:
    """One 2025-11-25 session over streamable HTTP, spoken by hand."""

    def __init__(self, http: httpx2.AsyncClient, url: str) -> None:
        self._http = http
        self._url = url
        self._session: str | None = None
        self._ids = 0

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """The JSON-RPC response (`result` or `error`) to one request."""
        self._ids += 1
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        if self._session is not None:
            headers |= {"Mcp-Session-Id": self._session, "MCP-Protocol-Version": LEGACY}
        body = {"jsonrpc": "2.0", "id": self._ids, "method": method, "params": params or {}}
        response = await self._http.post(f"{self._url}/mcp", json=body, headers=headers)
        self._session = response.headers.get("mcp-session-id", self._session)
        if response.headers.get("content-type", "").startswith("application/json"):
            return dict(response.json())
        frames = [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]
        return next(frame for frame in frames if frame.get("id") == self._ids)

    async def notify(self, method: str) -> None:
        headers = {"Mcp-Session-Id": self._session or "", "MCP-Protocol-Version": LEGACY}
        headers |= {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        await self._http.post(f"{self._url}/mcp", json={"jsonrpc": "2.0", "method": method}, headers=headers)


@asynccontextmanager
async def legacy_session(engine: Engine) -> AsyncIterator[tuple[LegacyWire, dict[str, Any]]]:
    async with serving(engine) as url, httpx2.AsyncClient(timeout=httpx2.Timeout(30, read=120)) as http:
        wire = LegacyWire(http, url)
        hello = await wire.send(
            "initialize",
            {"protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "legacy-test", "version": "1"}},
        )
        await wire.notify("notifications/initialized")
        yield wire, hello["result"]


async def task_call(wire: LegacyWire, tool: str, **arguments: Any) -> dict[str, Any]:
    return await wire.send("tools/call", {"name": tool, "arguments": arguments, "task": {"ttl": 60000}})


async def until_status(wire: LegacyWire, task_id: str, holds: Any, within_s: float = 20) -> dict[str, Any]:
    with anyio.fail_after(within_s):
        while not holds(task := (await wire.send("tasks/get", {"taskId": task_id}))["result"]):  # noqa: ASYNC110
            await anyio.sleep(0.05)
    return task


async def test_a_legacy_client_gets_the_2025_capability_the_tool_annotation_and_a_task(
    engine: Engine, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    async with legacy_session(engine) as (wire, hello):
        assert hello["protocolVersion"] == LEGACY
        assert hello["capabilities"]["tasks"] == {"cancel": {}, "requests": {"tools": {"call": {}}}}
        assert "extensions" not in hello["capabilities"]
        tools = {t["name"]: t for t in (await wire.send("tools/list"))["result"]["tools"]}
        assert tools["dispatch_effect"]["execution"] == {"taskSupport": "optional"}
        assert tools["dispatch_flow"]["execution"] == {"taskSupport": "optional"}
        assert "execution" not in tools["poll_effect"]

        began = time.monotonic()
        created = (await task_call(wire, "dispatch_effect", command=py(WAIT_FOR_FILE, str(gate))))["result"]
        assert time.monotonic() - began < 2
        task = created["task"]
        assert task["taskId"].startswith("eff_") and task["status"] == "working" and task["ttl"] is None
        assert task["pollInterval"] > 0 and "createdAt" in task and "lastUpdatedAt" in task
        working = await until_status(wire, task["taskId"], lambda t: t["statusMessage"] == "started")
        assert working["status"] == "working"
        gate.touch()
        result = (await wire.send("tasks/result", {"taskId": task["taskId"]}))["result"]  # waits for the end
        assert result["structuredContent"]["status"] == "succeeded" and result["isError"] is False
        assert result["_meta"]["io.modelcontextprotocol/related-task"] == {"taskId": task["taskId"]}
        ended = (await wire.send("tasks/get", {"taskId": task["taskId"]}))["result"]
        assert ended["status"] == "completed"


async def test_a_legacy_cancel_kills_the_group_and_unknown_or_ended_tasks_are_invalid_params(engine: Engine) -> None:
    async with legacy_session(engine) as (wire, _):
        task = (await task_call(wire, "dispatch_effect", command=py(CHILD_WITH_GRANDCHILD), grace_s=0.3))["result"]
        task_id = task["task"]["taskId"]
        state = await until_status(wire, task_id, lambda t: "pids" in (t.get("statusMessage") or ""))
        pids = [int(p) for p in state["statusMessage"].split()[1:3]]
        answer = (await wire.send("tasks/cancel", {"taskId": task_id}))["result"]
        assert answer["taskId"] == task_id
        done = await until_status(wire, task_id, lambda t: t["status"] != "working")
        assert done["status"] == "cancelled" and "tasks/cancel" in done["statusMessage"]
        assert not any(pid_alive(pid) for pid in pids)
        again = await wire.send("tasks/cancel", {"taskId": task_id})
        assert again["error"]["code"] == -32602
        unknown = await wire.send("tasks/get", {"taskId": "eff_nope"})
        assert unknown["error"]["code"] == -32602
        refused = await task_call(wire, "dispatch_effect", command="not a list")
        assert refused["result"]["isError"] is True  # the tool's own error; no task
        plain = await wire.send("tools/call", {"name": "dispatch_effect", "arguments": {"command": py("print(1)")}})
        assert plain["result"]["structuredContent"]["status"] == "succeeded"  # no params.task: inline, as ever
