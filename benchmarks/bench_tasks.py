"""The MCP task round trip (the `io.modelcontextprotocol/tasks` extension), for bench_engine's section 2:
a task-aware client's `tools/call` of `dispatch_effect` answered with a `CreateTaskResult`, and
`tasks/get` of a finished task, each beside `poll_effect` of a finished effect in the same loop."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from mcp import Client
from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim
from mcp_types import CallToolResult, Request, RequestParams, Result
from pydantic import ConfigDict

TASKS = "io.modelcontextprotocol/tasks"


class _TaskIdParams(RequestParams):
    task_id: str


class _GetTask(Request[_TaskIdParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    name_param = "taskId"


class _Task(Result):
    model_config = ConfigDict(extra="allow")
    task_id: str
    status: str


class _Created(Result):
    model_config = ConfigDict(extra="allow")
    result_type: Literal["task"] = "task"
    task_id: str
    status: str


async def _unresolved(created: _Created, ctx: ClaimContext) -> CallToolResult:
    raise AssertionError("the benchmark reads the CreateTaskResult itself (allow_claimed)")


class _Tasks(ClientExtension):
    identifier = TASKS

    def claims(self) -> list[ResultClaim[Any]]:
        return [ResultClaim(result_type="task", model=_Created, resolve=_unresolved)]


def task_client_extensions() -> list[Any]:
    """What a client passes as `Client(extensions=...)` to declare the tasks extension and read its tasks."""
    return [_Tasks()]


async def task_round_trips(
    client: Client, calls: int, command: list[str], call: Callable[..., Awaitable[Any]]
) -> tuple[list[float], list[float], list[float]]:
    """(tools/call -> CreateTaskResult, tasks/get of a finished task, poll_effect of a finished effect),
    each timed in the same loop; the task is awaited (untimed) before the next call. `call` is the
    benchmark's tool-call helper."""
    created = await client.session.call_tool("dispatch_effect", {"command": command}, allow_claimed=True)
    first = _task_id(created)
    await call(client, "await_group", effect_ids=[first], mode="all", timeout_s=30)
    create: list[float] = []
    get: list[float] = []
    poll: list[float] = []
    for _ in range(calls):
        t0 = time.perf_counter()
        created = await client.session.call_tool("dispatch_effect", {"command": command}, allow_claimed=True)
        create.append(time.perf_counter() - t0)
        await call(client, "await_group", effect_ids=[_task_id(created)], mode="all", timeout_s=30)
        t0 = time.perf_counter()
        state = await client.session.send_request(_GetTask(params=_TaskIdParams(task_id=first)), _Task)
        get.append(time.perf_counter() - t0)
        assert state.status == "completed", state
        t0 = time.perf_counter()
        await call(client, "poll_effect", effect_id=first)
        poll.append(time.perf_counter() - t0)
    return create, get, poll


def _task_id(result: Any) -> str:
    if not isinstance(result, _Created):
        raise AssertionError(f"dispatch_effect did not answer with a task: {result!r}")
    return result.task_id
