"""Task notifications on `subscriptions/listen` (2026-07-28): a client that declared the tasks extension
and lists `taskIds` in its listen filter gets `notifications/tasks` (the task as `tasks/get` answers it)
for those tasks: at once, then on every status change, and when the status message changes, at most
once a second per task (a message held back is sent when its second is over). A task is followed until
it ends.

The SDK's `ListenHandler` serves the rest of the filter and knows nothing of `taskIds` (it acknowledges
only the core keys), so it is wrapped: its acknowledgement gets the honored `taskIds`, and the task
notifications ride the same stream, tagged with the same subscription id, only after it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, cast

import anyio
from mcp.server.context import HandlerResult, ServerRequestContext
from mcp.shared.subscriptions import SUBSCRIPTION_ID_META_KEY
from mcp_types import (
    Notification,
    NotificationParams,
    SubscriptionFilter,
    SubscriptionsAcknowledgedNotification,
    SubscriptionsListenRequestParams,
)
from pydantic import BaseModel, ConfigDict

from effectd.engine.core import Engine
from effectd.errors import UnknownEffectError
from effectd.protocol.tasks.views import TaskView

MESSAGE_EVERY_S = 1.0  # at most one status-message notification a second per task
RECHECK_S = 1.0  # a flow's own status can change without an effect changing: look again this often
TERMINAL = ("completed", "failed", "cancelled")

Listen = Callable[[ServerRequestContext[Any, Any], Any], Awaitable[HandlerResult]]
View = Callable[[str], Awaitable[TaskView]]


class TaskStatusParams(NotificationParams):
    model_config = ConfigDict(extra="allow")


class TaskStatusNotification(Notification[TaskStatusParams, Literal["notifications/tasks"]]):
    method: Literal["notifications/tasks"] = "notifications/tasks"


class _Acknowledging:
    """A session whose listen acknowledgement also names the honored task ids (then lets the pump go)."""

    def __init__(self, session: Any, task_ids: list[str], acked: anyio.Event) -> None:
        self._session = session
        self._task_ids = task_ids
        self._acked = acked

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    async def send_notification(self, notification: Any, related_request_id: Any = None) -> None:
        if isinstance(notification, SubscriptionsAcknowledgedNotification) and not self._acked.is_set():
            honored = notification.params.notifications.model_dump(by_alias=True, exclude_none=True)
            notification.params.notifications = SubscriptionFilter.model_validate(honored | {"taskIds": self._task_ids})
            await self._session.send_notification(notification, related_request_id)
            self._acked.set()
            return
        await self._session.send_notification(notification, related_request_id)


class TaskListen:
    """The `subscriptions/listen` handler: the SDK's, plus `taskIds` for clients of the tasks extension."""

    def __init__(self, inner: Listen, engine: Engine, view: View, declared: Callable[[Any], bool]) -> None:
        self._inner = inner
        self._engine = engine
        self._view = view
        self._declared = declared

    async def __call__(self, ctx: ServerRequestContext[Any, Any], params: BaseModel) -> HandlerResult:
        assert isinstance(params, SubscriptionsListenRequestParams)
        requested = (params.notifications.model_extra or {}).get("taskIds")
        task_ids = [t for t in requested if isinstance(t, str)] if isinstance(requested, list) else []
        if not task_ids or not self._declared(ctx):
            return await self._inner(ctx, params)
        task_ids = list(dict.fromkeys(task_ids))
        acked = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._pump, ctx.session, ctx.request_id, task_ids, acked)
            result = await self._inner(
                dataclasses.replace(ctx, session=cast(Any, _Acknowledging(ctx.session, task_ids, acked))), params
            )
            tg.cancel_scope.cancel()
        return result

    async def _pump(self, session: Any, subscription_id: Any, task_ids: Sequence[str], acked: anyio.Event) -> None:
        await acked.wait()
        meta = {SUBSCRIPTION_ID_META_KEY: subscription_id}
        watching = list(task_ids)
        sent: dict[str, tuple[str, str, float]] = {}  # task id -> (status, message, when the message went)
        async with self._engine.changes(per_second=10) as changes:
            while watching:
                due = float("inf")
                for task_id in list(watching):
                    try:
                        view = await self._view(task_id)
                    except UnknownEffectError:
                        watching.remove(task_id)
                        continue
                    now = anyio.current_time()
                    last = sent.get(task_id)
                    if (
                        last is None
                        or last[0] != view.status
                        or (last[1] != view.status_message and now - last[2] >= MESSAGE_EVERY_S)
                    ):
                        notification = TaskStatusNotification(params=TaskStatusParams(_meta=meta, **view.to_wire()))
                        await session.send_notification(notification, related_request_id=subscription_id)
                        sent[task_id] = (view.status, view.status_message, now)
                        if view.status in TERMINAL:
                            watching.remove(task_id)
                    elif last[1] != view.status_message:
                        due = min(due, last[2] + MESSAGE_EVERY_S - now)
                if not watching:
                    return
                with anyio.move_on_after(max(0.0, min(due, RECHECK_S))):
                    try:
                        await changes.__anext__()
                    except StopAsyncIteration:
                        return
