"""MCP tasks: effects and flows served as tasks of the `io.modelcontextprotocol/tasks` extension (SEP-2663).

One more front-end beside the tools, on the SDK's public `Extension` (mcp 2.3 has no tasks runtime):

- the extension is advertised in `server/discover` as exactly `{}` (the reference client reads any
  settings there as "no tasks");
- a `tools/call` of `dispatch_effect` or `dispatch_flow` whose request declares the extension (on a
  2026-07-28 connection, without `background: true`) dispatches through the engine and answers at once
  with a flat `CreateTaskResult` (`resultType: "task"`); its `taskId` is the effect id or the flow id.
  Arguments that the tool would refuse, or a dispatch the engine refuses, go the ordinary way instead,
  so they are the same tool error and nothing is written;
- `tasks/get` answers from the engine (so from the journal after a restart); `tasks/cancel` answers at
  once and cancels as `cancel_effect` (or, for a flow, `cancel_group`) does, reason `user`, message
  `tasks/cancel`, in the extension's own task group; a task is `input_required` while an approval of
  its effect (or of a step of its flow) waits, and `tasks/update` answers it (`decided_by: "client"`):
  an elicitation accepted with `decision` allow or deny answers so, declined denies, cancelled leaves
  it pending; any other update is acknowledged and ignored, as SEP-2663 asks;
- `subscriptions/listen` with `taskIds` gets `notifications/tasks` (see `task_listen`);
- the 2025-11-25 form (`params.task`) is served on legacy connections by `task_legacy.LegacyTasks`;
- these tasks methods are bound to the 2026-07-28 protocol only (on legacy connections the middleware
  answers the 2025-11-25 ones), need the extension on the request (else -32021), and on HTTP the
  `Mcp-Name` header must name the task.

The task state lives in the engine, which already keeps it durably: the request that created a task
ends with its response; only a cancel under way outlives its request, in the group `running()` owns.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
from anyio.abc import TaskGroup
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.extension import Extension, MethodBinding
from mcp.server.mcpserver import MCPServer, require_client_extension
from mcp.server.mcpserver.tools import Tool
from mcp.shared.exceptions import MCPError
from mcp.shared.inbound import MCP_NAME_HEADER, decode_header_value
from mcp_types import HEADER_MISMATCH, INTERNAL_ERROR, INVALID_PARAMS, CallToolRequestParams, RequestParams
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from effectd.engine.core import Engine
from effectd.errors import EffectdError, UnknownEffectError
from effectd.flows.models import FlowRecord, FlowRequest
from effectd.model.arguments import DispatchArguments
from effectd.model.records import EffectRecord
from effectd.protocol.compat import lowlevel, tool_result, validated_arguments
from effectd.protocol.tasks.listen import TaskListen
from effectd.protocol.tasks.views import TaskView, answer_inputs, view_task

TASKS = "io.modelcontextprotocol/tasks"
TASK_TOOLS = ("dispatch_effect", "dispatch_flow")
CANCEL_MESSAGE = "tasks/cancel"
_MODERN = frozenset(MODERN_PROTOCOL_VERSIONS)


class TaskParams(RequestParams):
    """`tasks/get` and `tasks/cancel` params (wire names `taskId`, `requestState`)."""

    task_id: str
    request_state: str | None = None


class UpdateTaskParams(TaskParams):
    input_responses: dict[str, Any] | None = None


def declared(ctx: ServerRequestContext[Any, Any]) -> bool:
    """Whether this request's client declared the tasks extension."""
    capabilities = ctx.session.client_capabilities
    return bool(capabilities and capabilities.extensions and TASKS in capabilities.extensions)


class TasksExtension(Extension):
    """Serves effectd's effects and flows as MCP tasks (see the module docstring)."""

    identifier = TASKS

    def __init__(self, engine: Engine, tools: Sequence[Tool]) -> None:
        self._engine = engine
        self._tools: Mapping[str, Tool] = {tool.name: tool for tool in tools if tool.name in TASK_TOOLS}
        self._tg: TaskGroup | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The task group that carries out `tasks/cancel` after its answer (entered with the server's lifespan)."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                yield
            finally:
                self._tg = None

    def install(self, server: MCPServer[Any]) -> None:
        """Adds `taskIds` to the server's `subscriptions/listen` (task notifications; see task_listen)."""
        inner = lowlevel(server)
        entry = inner.get_request_handler("subscriptions/listen")
        if entry is not None:
            listen = TaskListen(entry.handler, self._engine, self.view, declared)
            inner.add_request_handler("subscriptions/listen", entry.params_type, listen)

    def settings(self) -> dict[str, Any]:
        return {}

    def methods(self) -> Sequence[MethodBinding]:
        return (
            MethodBinding("tasks/get", TaskParams, self._get, _MODERN),
            MethodBinding("tasks/update", UpdateTaskParams, self._update, _MODERN),
            MethodBinding("tasks/cancel", TaskParams, self._cancel, _MODERN),
        )

    # --- tools/call -------------------------------------------------------------------------------

    async def intercept_tool_call(
        self, params: CallToolRequestParams, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        tool = self._tools.get(params.name)
        if tool is None or ctx.protocol_version not in _MODERN or not declared(ctx):
            return await call_next(ctx)
        try:
            arguments = validated_arguments(tool, params.arguments or {})
        except ValidationError:
            return await call_next(ctx)  # the tool's own error for these arguments; nothing is written
        if arguments.get("background"):
            return await call_next(ctx)
        try:
            task_id = await self.dispatch(tool.name, arguments)
        except EffectdError:
            return await call_next(ctx)  # refused before anything was written: the tool says why
        view = await self.view(task_id)
        return {"resultType": "task", **view.to_wire()}

    @property
    def tool_names(self) -> frozenset[str]:
        return frozenset(self._tools)

    def tool(self, name: str) -> Tool:
        return self._tools[name]

    async def dispatch(self, name: str, arguments: dict[str, Any]) -> str:
        """Dispatches what a task-backed call of `name` asks (arguments already validated); the task id."""
        if name == "dispatch_effect":
            call = DispatchArguments.model_construct(**arguments)
            return (await self._engine.dispatch(call.request())).record.effect_id
        flow = await self._engine.dispatch_flow(FlowRequest.of(arguments))
        return flow.record.flow_id

    # --- tasks/* ----------------------------------------------------------------------------------

    async def view(self, task_id: str) -> TaskView:
        """The task as `tasks/get` answers it; UnknownEffectError names an unknown id."""
        return await view_task(self._engine, task_id, self._effect_result, self._flow_result)

    def _effect_result(self, record: EffectRecord | FlowRecord) -> dict[str, Any]:
        return tool_result(self._tools["dispatch_effect"], record)

    def _flow_result(self, record: EffectRecord | FlowRecord) -> dict[str, Any]:
        return tool_result(self._tools["dispatch_flow"], record)

    async def _get(self, ctx: ServerRequestContext[Any, Any], params: TaskParams) -> HandlerResult:
        _check(ctx, params)
        try:
            view = await self.view(params.task_id)
        except UnknownEffectError as exc:
            raise MCPError(INVALID_PARAMS, f"Failed to retrieve task: {exc}") from None
        return {"resultType": "complete", **view.to_wire()}

    async def _cancel(self, ctx: ServerRequestContext[Any, Any], params: TaskParams) -> HandlerResult:
        _check(ctx, params)
        await self.cancel_soon(params.task_id)  # SEP-2663: acknowledged for any task id, known or not
        return {"resultType": "complete"}

    async def cancel_soon(self, task_id: str) -> bool:
        """Starts cancelling the task (reason `user`, message `tasks/cancel`) and returns at once; False
        for an unknown id."""
        if self._tg is None:
            raise MCPError(INTERNAL_ERROR, "the tasks extension is not running")
        cancel: Callable[[], Awaitable[object]]
        try:
            await self._engine.poll(task_id)
            cancel = partial(self._engine.cancel, task_id, message=CANCEL_MESSAGE)
        except UnknownEffectError:
            try:
                await self._engine.poll_flow(task_id)
            except UnknownEffectError:
                return False
            cancel = partial(self._engine.cancel_flow, task_id, message=CANCEL_MESSAGE)
        self._tg.start_soon(_shielded, cancel)  # the cancel goes on here, after the answer
        return True

    async def wait(self, task_id: str) -> None:
        """Waits, without bound, for the task to end."""
        if await self._is_flow(task_id):
            await self._engine.follow_flow(task_id, None)
        else:
            await self._engine.follow(task_id, None)

    async def final_result(self, task_id: str) -> dict[str, Any]:
        """The `CallToolResult` (wire JSON) the foreground call returns for the task as it is now."""
        if await self._is_flow(task_id):
            return self._flow_result(await self._engine.poll_flow(task_id))
        return self._effect_result(await self._engine.poll(task_id))

    async def _is_flow(self, task_id: str) -> bool:
        try:
            await self._engine.poll(task_id)
        except UnknownEffectError:
            return True
        return False

    async def _update(self, ctx: ServerRequestContext[Any, Any], params: UpdateTaskParams) -> HandlerResult:
        _check(ctx, params)
        await answer_inputs(self._engine, params.task_id, params.input_responses or {})
        return {"resultType": "complete"}  # SEP-2663: any update is acknowledged


async def _shielded(cancel: Callable[[], Awaitable[object]]) -> None:
    """Runs a cancel that was acknowledged: seen through even when the server stops meanwhile."""
    with anyio.CancelScope(shield=True):
        await cancel()


def _check(ctx: ServerRequestContext[Any, Any], params: TaskParams) -> None:
    """The client declared the extension (else -32021); on HTTP, `Mcp-Name` names the task (else -32020)."""
    require_client_extension(ctx, TASKS)
    headers = getattr(ctx.request, "headers", None)
    if headers is not None and decode_header_value(headers.get(MCP_NAME_HEADER)) != params.task_id:
        raise MCPError(HEADER_MISMATCH, f"the {MCP_NAME_HEADER} header must equal params.taskId ({params.task_id!r})")
