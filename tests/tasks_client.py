"""The client side of MCP tasks for tests, on the official Python client (mcp 2.3 has no tasks helper).

`TasksClient` declares `io.modelcontextprotocol/tasks` on every request and claims the `resultType:
"task"` shape, so `client.call_tool` of a task-backed tool settles the task by polling `tasks/get`, as a
task-aware client would. `tasks_get`, `tasks_cancel` send the raw requests (with `Mcp-Name` = the task
id over HTTP, as SEP-2663 wants).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import anyio
from mcp import Client
from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim
from mcp.client.session import ClientSession
from mcp_types import CallToolResult, Request, RequestParams, Result
from pydantic import ConfigDict

TASKS = "io.modelcontextprotocol/tasks"
TERMINAL = ("completed", "failed", "cancelled")


class CreatedTask(Result):
    """A flat `CreateTaskResult` (2026-07-28 extension shape)."""

    model_config = ConfigDict(extra="allow")
    result_type: Literal["task"] = "task"
    task_id: str
    status: str
    created_at: str
    last_updated_at: str
    ttl_ms: int | None
    poll_interval_ms: int | None = None
    status_message: str | None = None


class TaskState(Result):
    """What `tasks/get` answers: the task, plus `result` once completed."""

    model_config = ConfigDict(extra="allow")
    result_type: Literal["complete"] = "complete"
    task_id: str
    status: str
    created_at: str
    last_updated_at: str
    ttl_ms: int | None
    poll_interval_ms: int | None = None
    status_message: str | None = None
    result: dict[str, Any] | None = None


class Ack(Result):
    model_config = ConfigDict(extra="allow")
    result_type: str | None = None


class TaskIdParams(RequestParams):
    task_id: str


class GetTask(Request[TaskIdParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    name_param = "taskId"


class CancelTask(Request[TaskIdParams, Literal["tasks/cancel"]]):
    method: Literal["tasks/cancel"] = "tasks/cancel"
    name_param = "taskId"


async def tasks_get(session: ClientSession, task_id: str) -> TaskState:
    return await session.send_request(GetTask(params=TaskIdParams(task_id=task_id)), TaskState)


async def tasks_cancel(session: ClientSession, task_id: str) -> Ack:
    return await session.send_request(CancelTask(params=TaskIdParams(task_id=task_id)), Ack)


async def settle(session: ClientSession, task_id: str, within_s: float = 60) -> TaskState:
    """Polls `tasks/get` (faster than the server's hint: tests wait on conditions) until the task ended."""
    with anyio.fail_after(within_s):
        while (state := await tasks_get(session, task_id)).status not in TERMINAL:  # noqa: ASYNC110 - a tasks client polls
            await anyio.sleep(0.05)
    return state


async def until(client: Client, task_id: str, holds: Callable[[TaskState], bool], within_s: float = 20) -> TaskState:
    """Polls `tasks/get` until `holds(state)`; fails if the task ends first."""
    with anyio.fail_after(within_s):
        while not holds(state := await tasks_get(client.session, task_id)):  # noqa: ASYNC110 - a tasks client polls
            assert state.status not in TERMINAL, f"the task ended first: {state}"
            await anyio.sleep(0.02)
    return state


async def _resolve(created: CreatedTask, ctx: ClaimContext) -> CallToolResult:
    state = await settle(ctx.session, created.task_id)
    assert state.status == "completed" and state.result is not None, state
    return CallToolResult.model_validate(state.result)


class TasksClient(ClientExtension):
    """Declares the tasks extension and settles task results of `tools/call`."""

    identifier = TASKS

    def claims(self) -> list[ResultClaim[Any]]:
        return [ResultClaim(result_type="task", model=CreatedTask, resolve=_resolve)]


async def start_task(client: Client, tool: str, **arguments: Any) -> CreatedTask:
    """A `tools/call` that must answer with a task."""
    result = await client.session.call_tool(tool, arguments, allow_claimed=True)
    assert isinstance(result, CreatedTask), f"{tool} answered {result!r}, not a task"
    return result
