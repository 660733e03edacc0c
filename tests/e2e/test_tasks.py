"""MCP tasks (the `io.modelcontextprotocol/tasks` extension): effects and flows as tasks of task-aware
clients, with the official Python client in memory, over stdio and over HTTP, declaring the extension."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, GetTaskRequest, GetTaskRequestParams, GetTaskResult

from effectd.app import build_server
from effectd.config.settings import Settings
from effectd.engine.core import Engine
from tests.helpers.http import WAIT_FOR_FILE, http_client, serving
from tests.helpers.mcp import call, structured
from tests.helpers.processes import CHILD_WITH_GRANDCHILD, SLEEP, event_count, pid_alive, py, stdio_params
from tests.helpers.tasks_client import (
    TASKS,
    TasksClient,
    listening,
    settle,
    start_task,
    tasks_cancel,
    tasks_get,
    until,
)

pytestmark = pytest.mark.anyio

MISSING_CLIENT_CAPABILITY = -32021


@asynccontextmanager
async def task_client(engine: Engine) -> AsyncIterator[Client]:
    """The official client in memory, declaring the tasks extension on every request."""
    async with Client(build_server(engine), read_timeout_seconds=70, extensions=[TasksClient()]) as client:
        yield client


async def test_the_extension_is_advertised_as_an_empty_object(engine: Engine) -> None:
    async with task_client(engine) as client:
        assert client.protocol_version == "2026-07-28"
        assert client.server_capabilities.extensions == {TASKS: {}}
        assert client.server_capabilities.tasks is None  # the 2025-11-25 capability: legacy connections only
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert tools["dispatch_effect"].execution is None  # no annotation is needed on 2026-07-28


async def test_a_dispatch_becomes_a_task_that_completes_with_the_foreground_result(engine: Engine) -> None:
    async with task_client(engine) as client:
        began = time.monotonic()
        task = await start_task(client, "dispatch_effect", command=py(SLEEP + "; print('done')", "1"))
        assert time.monotonic() - began < 1, "the task must come back at once, not after the effect"
        assert task.status == "working" and task.task_id.startswith("eff_")
        assert task.ttl_ms is None and task.poll_interval_ms and task.poll_interval_ms > 0
        first = await tasks_get(client.session, task.task_id)  # resolves at once after creation
        assert first.status == "working" and first.result is None
        state = await settle(client.session, task.task_id)
        assert state.status == "completed"
        assert state.result is not None and state.result["isError"] is False
        record = state.result["structuredContent"]
        assert record["effect_id"] == task.task_id and record["status"] == "succeeded"
        assert record["output_tail"] == "done\n"
        # The very record poll_effect gives: the CallToolResult a foreground call returns once it ended.
        assert record == await call(client, "poll_effect", effect_id=task.task_id)
        assert "succeeded" in (state.status_message or "")
        # Terminal states are final.
        assert (await tasks_get(client.session, task.task_id)).status == "completed"


async def test_call_tool_of_a_task_aware_client_settles_the_task(engine: Engine) -> None:
    async with task_client(engine) as client:
        result = await client.call_tool("dispatch_effect", {"command": py("print('via a task')")})
        assert not result.is_error
        assert structured(result)["status"] == "succeeded" and structured(result)["output_tail"] == "via a task\n"


async def test_a_failing_command_completes_the_task_with_its_failed_record(engine: Engine) -> None:
    async with task_client(engine) as client:
        task = await start_task(client, "dispatch_effect", command=py("import sys; sys.exit(3)"))
        state = await settle(client.session, task.task_id)
        assert state.status == "completed" and state.result is not None
        assert state.result["structuredContent"]["status"] == "failed"
        assert state.result["structuredContent"]["exit_code"] == 3


async def test_working_carries_the_latest_output_line_as_its_status_message(engine: Engine, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    async with task_client(engine) as client:
        task = await start_task(client, "dispatch_effect", command=py(WAIT_FOR_FILE, str(gate)))
        state = await until(client, task.task_id, lambda s: s.status_message == "started")
        assert state.status == "working" and state.poll_interval_ms
        gate.touch()
        done = await settle(client.session, task.task_id)
        assert done.status == "completed"


async def test_a_queued_task_says_its_place_in_the_queue(settings: Settings, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    async with Engine.open(replace(settings, max_concurrency=1)) as engine, task_client(engine) as client:
        first = await start_task(client, "dispatch_effect", command=py(WAIT_FOR_FILE, str(gate)))
        await until(client, first.task_id, lambda s: s.status_message == "started")  # it holds the one slot
        second = await start_task(client, "dispatch_effect", command=py("print(1)"))
        third = await start_task(client, "dispatch_effect", command=py("print(2)"))
        state = await until(client, third.task_id, lambda s: (s.status_message or "").startswith("queued"))
        assert state.status == "working"
        assert state.status_message == "queued: place 2 of 2 waiting for a free slot"
        assert (await tasks_get(client.session, second.task_id)).status_message == (
            "queued: place 1 of 2 waiting for a free slot"
        )
        gate.touch()
        assert (await settle(client.session, first.task_id)).status == "completed"
        assert (await settle(client.session, second.task_id)).status == "completed"
        assert (await settle(client.session, third.task_id)).status == "completed"


async def test_tasks_cancel_kills_the_process_group_and_the_task_reads_cancelled(engine: Engine) -> None:
    async with task_client(engine) as client:
        task = await start_task(client, "dispatch_effect", command=py(CHILD_WITH_GRANDCHILD), grace_s=0.3)
        state = await until(client, task.task_id, lambda s: "pids" in (s.status_message or ""))
        pids = [int(p) for p in (state.status_message or "").split()[1:3]]
        assert all(pid_alive(pid) for pid in pids)
        began = time.monotonic()
        ack = await tasks_cancel(client.session, task.task_id)
        assert time.monotonic() - began < 0.3, "tasks/cancel is answered at once"
        assert ack.result_type == "complete"
        done = await settle(client.session, task.task_id)
        assert done.status == "cancelled"
        assert "user" in (done.status_message or "") and "tasks/cancel" in (done.status_message or "")
        assert done.result is None
        assert not any(pid_alive(pid) for pid in pids), "the whole process group is gone"
        record = await call(client, "poll_effect", effect_id=task.task_id)
        assert record["cancel_reason"] == "user" and record["cancel_message"] == "tasks/cancel"


async def test_a_flow_is_a_task_that_counts_its_steps(engine: Engine, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    steps = [
        {"id": "a", "command": py("print('a')")},
        {"id": "b", "command": py(WAIT_FOR_FILE, str(gate)), "needs": ["a"]},
        {"id": "c", "command": py("print('c')"), "needs": ["a"]},
        {"id": "d", "command": py("print('d')"), "needs": ["b", "c"]},
    ]
    async with task_client(engine) as client:
        task = await start_task(client, "dispatch_flow", steps=steps)
        assert task.task_id.startswith("flw_") and task.status == "working"
        await until(client, task.task_id, lambda s: s.status_message == "2/4 steps done, 1 running")
        gate.touch()
        done = await settle(client.session, task.task_id)
        assert done.status == "completed" and done.status_message == "succeeded: 4/4 steps done"
        assert done.result is not None
        flow = done.result["structuredContent"]
        assert flow["flow_id"] == task.task_id and flow["status"] == "succeeded"
        assert flow == await call(client, "poll_flow", flow_id=task.task_id)


async def test_a_flow_task_keeps_its_budget_and_its_resume(engine: Engine) -> None:
    """Regression: a task-backed `dispatch_flow` relayed five of its seven arguments by hand, and
    dropped `budget` and `resume`; now the task and the foreground call take the same request."""
    steps = [{"id": "a", "command": py("print('a')")}, {"id": "b", "command": py("print('b')"), "needs": ["a"]}]
    async with task_client(engine) as client:
        first = await settle(client.session, (await start_task(client, "dispatch_flow", steps=steps)).task_id)
        assert first.status == "completed"
        old = first.result["structuredContent"] if first.result else {}
        task = await start_task(client, "dispatch_flow", steps=steps, resume=old["flow_id"], budget={"max_tokens": 7})
        done = await settle(client.session, task.task_id)
        assert done.status == "completed" and done.result is not None
        flow = done.result["structuredContent"]
        assert flow["resumed_from"] == old["flow_id"] and flow["cached_steps"] == 2
        budget = (await call(client, "list_effects", group=task.task_id))["summary"]["budget"]
        assert budget["scope"] == {"group": task.task_id} and budget["max_tokens"] == 7


async def test_tasks_cancel_of_a_flow_cancels_its_group(engine: Engine) -> None:
    steps = [{"id": "slow", "command": py(SLEEP, "60")}, {"id": "after", "command": py("1"), "needs": ["slow"]}]
    async with task_client(engine) as client:
        task = await start_task(client, "dispatch_flow", steps=steps)
        await until(client, task.task_id, lambda s: s.status_message == "0/2 steps done, 1 running")
        await tasks_cancel(client.session, task.task_id)
        done = await settle(client.session, task.task_id)
        assert done.status == "cancelled"
        flow = await call(client, "poll_flow", flow_id=task.task_id)
        assert [s["status"] for s in flow["steps"]] == ["cancelled", "cancelled"]
        assert flow["steps"][0]["cancel_reason"] == "user"


async def test_bad_arguments_are_still_a_tool_error_and_write_nothing(engine: Engine, settings: Settings) -> None:
    async with task_client(engine) as client:
        before = event_count(settings.db)
        result = await client.session.call_tool("dispatch_effect", {"command": "echo"}, allow_claimed=True)
        assert getattr(result, "is_error", False), result
        assert "command" in result.content[0].text  # type: ignore[union-attr]
        result = await client.session.call_tool("dispatch_flow", {"steps": []}, allow_claimed=True)
        assert getattr(result, "is_error", False), result
        result = await client.session.call_tool(
            "dispatch_effect", {"command": ["x"], "cwd": "/no/such/dir"}, allow_claimed=True
        )
        assert getattr(result, "is_error", False), result
        assert event_count(settings.db) == before


async def test_background_true_still_returns_the_record(engine: Engine) -> None:
    async with task_client(engine) as client:
        record = await call(client, "dispatch_effect", command=py("1"), background=True)
        assert record["effect_id"].startswith("eff_") and "status" in record
        others = await call(client, "poll_effect", effect_id=record["effect_id"])  # not task-backed tools: as ever
        assert others["effect_id"] == record["effect_id"]


async def test_an_unknown_task_id_is_invalid_params_and_cancel_acknowledges_it(engine: Engine) -> None:
    async with task_client(engine) as client:
        with pytest.raises(MCPError) as raised:
            await tasks_get(client.session, "eff_nope")
        assert raised.value.error.code == INVALID_PARAMS and "eff_nope" in raised.value.error.message
        assert (await tasks_cancel(client.session, "eff_nope")).result_type == "complete"  # SEP-2663: always acked


async def test_a_client_without_the_extension_gets_no_task_and_minus_32021_on_tasks(engine: Engine) -> None:
    async with task_client(engine) as aware:
        task = await start_task(aware, "dispatch_effect", command=py("1"))
    async with Client(build_server(engine), read_timeout_seconds=70) as plain:
        record = await call(plain, "dispatch_effect", command=py("print('inline')"))
        assert record["status"] == "succeeded" and record["output_tail"] == "inline\n"
        for request in (tasks_get, tasks_cancel):
            with pytest.raises(MCPError) as raised:
                await request(plain.session, task.task_id)
            assert raised.value.error.code == MISSING_CLIENT_CAPABILITY


async def test_a_legacy_connection_gets_the_2025_task_shape_not_the_extensions(engine: Engine) -> None:
    async with serving(engine) as url, http_client(url, mode="legacy") as legacy:
        assert legacy.protocol_version.startswith("2025")
        assert legacy.server_capabilities.extensions is None
        record = await call(legacy, "dispatch_effect", command=py("1"))  # no params.task: inline, as ever
        assert record["status"] == "succeeded"
        task = await legacy.session.send_request(
            GetTaskRequest(params=GetTaskRequestParams(task_id=record["effect_id"])), GetTaskResult
        )
        assert task.status == "completed" and task.ttl is None  # 2025-11-25: `ttl`, no `result` inline
        assert "result" not in (task.model_extra or {})
        with pytest.raises(MCPError) as raised:
            await legacy.session.send_request(
                GetTaskRequest(params=GetTaskRequestParams(task_id="eff_x")), GetTaskResult
            )
        assert raised.value.error.code == INVALID_PARAMS


async def test_tasks_get_after_a_restart_answers_from_the_journal(settings: Settings) -> None:
    async with Engine.open(settings) as engine, task_client(engine) as client:
        task = await start_task(client, "dispatch_effect", command=py("print('kept')"))
        before = await settle(client.session, task.task_id)
    async with Engine.open(settings) as engine, task_client(engine) as client:
        after = await tasks_get(client.session, task.task_id)
        assert after.status == "completed" and after.result is not None and before.result is not None
        record, earlier = after.result["structuredContent"], before.result["structuredContent"]
        assert record == await call(client, "poll_effect", effect_id=task.task_id)
        for field in ("status", "exit_code", "output_tail", "created_at", "finished_at", "run_id"):
            assert record[field] == earlier[field], field
        assert record["output_tail"] == "kept\n" and after.created_at == before.created_at


# --- over stdio and HTTP --------------------------------------------------------------------------


async def test_tasks_over_stdio_complete_cancel_and_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    params = stdio_params(db, "--allow-any-command")
    tasks = TasksClient()
    async with Client(params, read_timeout_seconds=70, extensions=[tasks], message_handler=tasks.on_message) as client:
        assert client.server_capabilities.extensions == {TASKS: {}}
        task = await start_task(client, "dispatch_effect", command=py("print('over stdio')"))
        done = await settle(client.session, task.task_id)
        assert done.status == "completed" and done.result is not None
        assert done.result["structuredContent"]["output_tail"] == "over stdio\n"
        slow = await start_task(client, "dispatch_effect", command=py(CHILD_WITH_GRANDCHILD), grace_s=0.3)
        state = await until(client, slow.task_id, lambda s: "pids" in (s.status_message or ""))
        pids = [int(p) for p in (state.status_message or "").split()[1:3]]
        async with listening(client, tasks, [slow.task_id]) as acknowledged:
            assert acknowledged["taskIds"] == [slow.task_id]
            await tasks_cancel(client.session, slow.task_id)
            notice = await tasks.wait_for(lambda n: n.status == "cancelled")
            assert "tasks/cancel" in (notice.status_message or "")
        cancelled = await settle(client.session, slow.task_id)
        assert cancelled.status == "cancelled" and "tasks/cancel" in (cancelled.status_message or "")
        assert not any(pid_alive(pid) for pid in pids)
    async with Client(params, read_timeout_seconds=70, extensions=[TasksClient()]) as client:
        again = await tasks_get(client.session, task.task_id)
        assert again.status == "completed" and again.result is not None
        assert again.result["structuredContent"]["output_tail"] == "over stdio\n"
        assert (await tasks_get(client.session, slow.task_id)).status == "cancelled"


async def _post(url: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    envelope = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {"extensions": {TASKS: {}}},
    }
    body = {"jsonrpc": "2.0", "id": "1", **body}
    body["params"] = {**body.get("params", {}), "_meta": envelope}
    wire = {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": body["method"],
        **headers,
    }
    async with httpx2.AsyncClient(timeout=30) as http:
        response = await http.post(f"{url}/mcp", json=body, headers=wire)
    text = response.text
    if text.startswith("{"):
        return dict(response.json())
    data = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    return dict(json.loads(data[-1]))


async def test_over_http_tasks_get_needs_mcp_name_equal_to_the_task_id(engine: Engine) -> None:
    async with serving(engine) as url:
        async with http_client(url) as plain:
            record = await call(plain, "dispatch_effect", command=py("1"))
        effect_id = record["effect_id"]
        get = {"method": "tasks/get", "params": {"taskId": effect_id}}
        ok = await _post(url, get, {"Mcp-Name": effect_id})
        assert ok["result"]["status"] == "completed", ok
        wrong = await _post(url, get, {"Mcp-Name": "eff_other"})
        assert wrong["error"]["code"] == -32020 and "mcp-name" in wrong["error"]["message"], wrong
        missing = await _post(url, get, {})
        assert missing["error"]["code"] == -32020, missing
        # The official client sets the header itself.
        async with httpx2.AsyncClient(timeout=httpx2.Timeout(30, read=300)) as http:
            transport = streamable_http_client(f"{url}/mcp", http_client=http)
            async with Client(transport, read_timeout_seconds=70, extensions=[TasksClient()]) as aware:
                task = await start_task(aware, "dispatch_effect", command=py("print('http')"))
                done = await settle(aware.session, task.task_id)
                assert done.status == "completed"


# --- notifications --------------------------------------------------------------------------------


async def test_a_listener_gets_task_notifications_on_status_and_message_changes(engine: Engine, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    ticker = (
        "import os, sys, time\n"
        "for i in range(1000):\n"
        "    print(f'tick {i}', flush=True)\n"
        "    if os.path.exists(sys.argv[1]): break\n"
        "    time.sleep(0.05)\n"
    )
    tasks = TasksClient()
    async with Client(
        build_server(engine), read_timeout_seconds=70, extensions=[tasks], message_handler=tasks.on_message
    ) as client:
        task = await start_task(client, "dispatch_effect", command=py(ticker, str(gate)))
        async with listening(client, tasks, [task.task_id, "eff_unknown"]) as acknowledged:
            assert acknowledged["taskIds"] == [task.task_id, "eff_unknown"]
            await tasks.wait_for(lambda n: (n.status_message or "").startswith("tick"))
            # The effect prints 20 lines a second; let it print 60 more.
            await until(client, task.task_id, lambda s: int((s.status_message or "tick 0").split()[1]) >= 60)
            gate.touch()
            done = await tasks.wait_for(lambda n: n.status == "completed")
            assert done.task_id == task.task_id and done.result is not None
            assert done.result["structuredContent"]["status"] == "succeeded"
        ticks = [(at, n) for at, n in tasks.notices if (n.status_message or "").startswith("tick")]
        assert len(ticks) >= 2, "the message changes while it runs are notified"
        gaps = [later[0] - earlier[0] for earlier, later in zip(ticks, ticks[1:], strict=False)]
        assert min(gaps) >= 0.9, f"status message notices at most once a second: {gaps}"
        assert len(ticks) <= 6
        assert all(n.task_id == task.task_id for _, n in tasks.notices)
        assert all(n.meta and "io.modelcontextprotocol/subscriptionId" in n.meta for _, n in tasks.notices)


async def test_a_listener_is_told_when_a_flow_task_is_cancelled(engine: Engine) -> None:
    tasks = TasksClient()
    async with Client(
        build_server(engine), read_timeout_seconds=70, extensions=[tasks], message_handler=tasks.on_message
    ) as client:
        task = await start_task(client, "dispatch_flow", steps=[{"id": "slow", "command": py(SLEEP, "60")}])
        async with listening(client, tasks, [task.task_id]):
            await tasks.wait_for(lambda n: n.status == "working")
            await tasks_cancel(client.session, task.task_id)
            cancelled = await tasks.wait_for(lambda n: n.status == "cancelled")
            assert cancelled.task_id == task.task_id


async def test_a_sub_agent_task_over_stdio_shows_the_harness_progress_then_its_parsed_result(tmp_path: Path) -> None:
    config = tmp_path / "effectd.toml"
    config.write_text(
        f"""
result_grace_s = 0.5

[harness.fake]
command = [{sys.executable!r}, "-m", "effectd.harness.fake", "{{args}}", "{{prompt}}"]
parser = "claude"
env = {{ FAKE_HARNESS_DELAY = "0.3" }}
"""
    )
    params = stdio_params(tmp_path / "j.db", "--config", str(config))
    async with Client(params, read_timeout_seconds=70, extensions=[TasksClient()]) as client:
        task = await start_task(client, "dispatch_effect", harness="fake", prompt="summarise", args=["--steps", "4"])
        working = await until(client, task.task_id, lambda s: "Step" in (s.status_message or ""))
        assert working.status == "working" and not (working.status_message or "").startswith("{")
        done = await settle(client.session, task.task_id)
        assert done.status == "completed" and done.result is not None
        assert done.result["structuredContent"]["result"]["answer"] == "Done: summarise"
