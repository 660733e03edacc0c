"""The client side of MCP tasks for tests, on the official Python client (mcp 2.3 has no tasks helper).

`TasksClient` declares `io.modelcontextprotocol/tasks` on every request and claims the `resultType:
"task"` shape, so `client.call_tool` of a task-backed tool settles the task by polling `tasks/get`, as a
task-aware client would. `tasks_get`, `tasks_cancel` and `tasks_update` send the raw requests (with
`Mcp-Name` = the task id over HTTP, as SEP-2663 wants).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio
from mcp import Client
from mcp.client.extension import ClaimContext, ClientExtension, NotificationBinding, ResultClaim
from mcp.client.session import ClientSession
from mcp_types import (
    CallToolResult,
    Request,
    RequestParams,
    Result,
    SubscriptionFilter,
    SubscriptionsAcknowledgedNotification,
    SubscriptionsListenRequest,
    SubscriptionsListenRequestParams,
    SubscriptionsListenResult,
)
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

TASKS = "io.modelcontextprotocol/tasks"
TERMINAL = ("completed", "failed", "cancelled")


class _Task(Result):
    """The fields of a task, as both `CreateTaskResult` and `tasks/get` carry them."""

    model_config = ConfigDict(extra="allow")
    task_id: str
    status: str
    created_at: str
    last_updated_at: str
    ttl_ms: int | None
    poll_interval_ms: int | None = None
    status_message: str | None = None


class CreatedTask(_Task):
    """A flat `CreateTaskResult` (2026-07-28 extension shape)."""

    result_type: Literal["task"] = "task"


class TaskState(_Task):
    """What `tasks/get` answers: the task, plus `result` once completed."""

    result_type: Literal["complete"] = "complete"
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


class UpdateParams(RequestParams):
    task_id: str
    input_responses: dict[str, Any]


class UpdateTask(Request[UpdateParams, Literal["tasks/update"]]):
    method: Literal["tasks/update"] = "tasks/update"
    name_param = "taskId"


async def tasks_update(session: ClientSession, task_id: str, input_responses: dict[str, Any]) -> Ack:
    """`tasks/update` with these `inputResponses` (one elicitation result per input request key)."""
    params = UpdateParams(task_id=task_id, input_responses=input_responses)
    return await session.send_request(UpdateTask(params=params), Ack)


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


class TaskNotice(BaseModel):
    """The params of `notifications/tasks`: the task as `tasks/get` would answer it."""

    model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True)
    task_id: str
    status: str
    status_message: str | None = None
    result: dict[str, Any] | None = None
    meta: dict[str, Any] | None = Field(default=None, alias="_meta")


class TasksClient(ClientExtension):
    """Declares the tasks extension, settles task results of `tools/call`, and keeps the task
    notifications that arrive (`notices`, with the monotonic time each arrived)."""

    identifier = TASKS

    def __init__(self) -> None:
        self.notices: list[tuple[float, TaskNotice]] = []
        self.acks: list[dict[str, Any]] = []
        self.arrived = anyio.Event()

    async def on_message(self, message: Any) -> None:
        """The client's message handler: keeps the listen acknowledgements (pass it as `message_handler`)."""
        if isinstance(message, SubscriptionsAcknowledgedNotification):
            self.acks.append(message.params.notifications.model_dump(by_alias=True, exclude_none=True))
            self.arrived.set()
            self.arrived = anyio.Event()

    def claims(self) -> list[ResultClaim[Any]]:
        return [ResultClaim(result_type="task", model=CreatedTask, resolve=_resolve)]

    def notifications(self) -> list[NotificationBinding[Any]]:
        return [NotificationBinding(method="notifications/tasks", params_type=TaskNotice, handler=self._notice)]

    async def _notice(self, notice: TaskNotice) -> None:
        self.notices.append((time.monotonic(), notice))
        self.arrived.set()
        self.arrived = anyio.Event()

    async def wait_for(self, holds: Callable[[TaskNotice], bool], within_s: float = 20) -> TaskNotice:
        """The first notice (so far or to come) for which `holds`."""
        with anyio.fail_after(within_s):
            while True:
                for _, notice in self.notices:
                    if holds(notice):
                        return notice
                await self.arrived.wait()


@asynccontextmanager
async def listening(client: Client, tasks: TasksClient, task_ids: list[str]) -> AsyncIterator[dict[str, Any]]:
    """A raw `subscriptions/listen` stream for these task ids, open for the context (the client's
    `listen` has no `taskIds`); yields the filter the server acknowledged."""
    request = SubscriptionsListenRequest(
        params=SubscriptionsListenRequestParams(notifications=SubscriptionFilter.model_validate({"taskIds": task_ids}))
    )
    acks = len(tasks.acks)
    async with anyio.create_task_group() as tg:

        async def listen() -> None:
            await client.session.send_request(request, SubscriptionsListenResult, request_read_timeout_seconds=300)

        tg.start_soon(listen)
        with anyio.fail_after(20):
            while len(tasks.acks) == acks:
                await tasks.arrived.wait()
        try:
            yield tasks.acks[-1]
        finally:
            tg.cancel_scope.cancel()


async def start_task(client: Client, tool: str, **arguments: Any) -> CreatedTask:
    """A `tools/call` that must answer with a task."""
    result = await client.session.call_tool(tool, arguments, allow_claimed=True)
    assert isinstance(result, CreatedTask), f"{tool} answered {result!r}, not a task"
    return result
