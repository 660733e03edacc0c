"""The 2025-11-25 task form, on legacy connections (`params.task`, which VS Code sends).

On a 2025-11-25 connection mcp 2.3 validates every handler result against that revision's schema, so a
handler cannot answer `tools/call` with a `CreateTaskResult` (-32603), and the extension's methods are
bound to 2026-07-28 only. A `Server.middleware` sits above both: what it returns without calling on is
sent as it is. This one serves, on legacy connections only:

- `capabilities.tasks` (`cancel`, `requests.tools.call`) in the `initialize` result, and
  `execution.taskSupport: "optional"` on `dispatch_effect` and `dispatch_flow` in `tools/list`;
- a `tools/call` of either tool with `params.task`: dispatched, answered `{"task": Task}` at once
  (the same checks as the modern form: arguments the tool refuses go the ordinary way);
- `tasks/get` (the task), `tasks/result` (waits for the end, then the foreground `CallToolResult`),
  `tasks/cancel` (asks the cancel, answers the task; a task already ended is -32602).

The task itself is the one the modern form serves (`task_views`), in the 2025 shape (`ttl`,
`pollInterval`). On 2026-07-28 connections nothing here runs: SEP-2663 forbids the legacy capabilities
beside the extension.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from effectd.errors import EffectdError, UnknownEffectError
from effectd.protocol.compat import validated_arguments
from effectd.protocol.tasks.views import POLL_INTERVAL_MS, TaskView

if TYPE_CHECKING:
    from effectd.protocol.tasks.extension import TasksExtension

LEGACY = "2025-11-25"
RELATED_TASK = "io.modelcontextprotocol/related-task"
TERMINAL = ("completed", "failed", "cancelled")


def legacy_task(view: TaskView) -> dict[str, Any]:
    """The task in its 2025-11-25 shape."""
    return {
        "taskId": view.task_id,
        "status": view.status,
        "statusMessage": view.status_message,
        "createdAt": view.created_at,
        "lastUpdatedAt": view.last_updated_at,
        "ttl": None,
        "pollInterval": POLL_INTERVAL_MS,
    }


class LegacyTasks:
    """The middleware (see the module docstring)."""

    def __init__(self, tasks: TasksExtension) -> None:
        self._tasks = tasks

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return await call_next(ctx)
        params: dict[str, Any] = dict(ctx.params or {})
        match ctx.method:
            case "initialize":
                return _with_capability(await call_next(ctx))
            case "tools/list":
                return self._with_task_support(await call_next(ctx))
            case "tools/call" if isinstance(params.get("task"), dict) and params.get("name") in self._tasks.tool_names:
                return await self._call(ctx, call_next, params)
            case "tasks/get":
                return legacy_task(await self._view(params))
            case "tasks/result":
                return await self._result(params)
            case "tasks/cancel":
                return await self._cancel(params)
        return await call_next(ctx)

    def _with_task_support(self, result: HandlerResult) -> HandlerResult:
        if isinstance(result, dict):
            for tool in result.get("tools", []):
                if tool.get("name") in self._tasks.tool_names:
                    tool["execution"] = {**tool.get("execution", {}), "taskSupport": "optional"}
        return result

    async def _call(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext, params: dict[str, Any]
    ) -> HandlerResult:
        name = str(params["name"])
        try:
            arguments = validated_arguments(self._tasks.tool(name), params.get("arguments") or {})
            task_id = await self._tasks.dispatch(name, arguments)
        except (ValidationError, EffectdError):
            return await call_next(ctx)  # the tool's own error; nothing was written
        return {"task": legacy_task(await self._tasks.view(task_id))}

    async def _view(self, params: dict[str, Any]) -> TaskView:
        task_id = params.get("taskId")
        if not isinstance(task_id, str):
            raise MCPError(INVALID_PARAMS, "params.taskId (a string) is required")
        try:
            return await self._tasks.view(task_id)
        except UnknownEffectError as exc:
            raise MCPError(INVALID_PARAMS, f"Failed to retrieve task: {exc}") from None

    async def _result(self, params: dict[str, Any]) -> dict[str, Any]:
        view = await self._view(params)
        if view.status not in TERMINAL:
            await self._tasks.wait(view.task_id)  # tasks/result waits for the end (2025-11-25)
            view = await self._view(params)
        result = await self._tasks.final_result(view.task_id)
        result["_meta"] = {**result.get("_meta", {}), RELATED_TASK: {"taskId": view.task_id}}
        return result

    async def _cancel(self, params: dict[str, Any]) -> dict[str, Any]:
        view = await self._view(params)
        if view.status in TERMINAL:
            raise MCPError(INVALID_PARAMS, f"task {view.task_id!r} already ended ({view.status}): nothing to cancel")
        await self._tasks.cancel_soon(view.task_id)
        return legacy_task(view)


def _with_capability(result: HandlerResult) -> HandlerResult:
    if isinstance(result, dict) and result.get("protocolVersion") == LEGACY:
        capabilities = result.setdefault("capabilities", {})
        capabilities["tasks"] = {"cancel": {}, "requests": {"tools": {"call": {}}}}
    return result
