"""Following an effect or a flow in the foreground: progress while it runs, and a cancel if the caller leaves.

A foreground `dispatch_effect` (or `dispatch_flow`, or the Python API's `run_effect`) waits here for
its work to end, reporting progress at most ten times a second; a caller that is cancelled while it
waits (a client that abandoned the call) runs `on_abandon` before the cancellation goes on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import anyio

from effectd.flows.models import Flow
from effectd.supervisor.effect import Effect

# How a foreground caller is told of progress: (progress, total, message), as MCP progress carries it.
ProgressSink = Callable[[float, float | None, str], Awaitable[None]]

PROGRESS_EVERY_S = 0.1


@contextmanager
def _abandoning(on_abandon: Callable[[], object] | None) -> Iterator[None]:
    """Runs `on_abandon` when the caller is cancelled inside (it gave up the wait), then lets the cancel go on."""
    try:
        yield
    except anyio.get_cancelled_exc_class():
        if on_abandon is not None:
            on_abandon()
        raise


def _within(wait_s: float | None) -> anyio.CancelScope:
    return anyio.move_on_after(wait_s if wait_s is not None else float("inf"))


async def follow_effect(
    effect: Effect, wait_s: float | None, progress: ProgressSink | None, on_abandon: Callable[[], object] | None
) -> None:
    """Waits up to `wait_s` (None: no bound) for the effect to end, reporting its latest output line
    (or the harness's latest text) whenever a new one arrived."""
    with _abandoning(on_abandon), _within(wait_s):
        sent: tuple[int, str] | None = None
        while not effect.terminal:
            changed = effect.changed
            line = (effect.progress or {}).get("last_text") or effect.output.last_line
            if progress is not None and line is not None and (effect.output.lines_seen, line) != sent:
                sent = (effect.output.lines_seen, line)
                await progress(effect.output.size, None, line)
                with anyio.move_on_after(PROGRESS_EVERY_S):  # at most ten notices a second
                    await effect.done.wait()
                continue
            await changed.wait()


async def follow_flow(
    flow: Flow, wait_s: float | None, progress: ProgressSink | None, on_abandon: Callable[[], object] | None
) -> None:
    """Waits up to `wait_s` (None: no bound) for the flow to end, reporting each step's end."""
    with _abandoning(on_abandon), _within(wait_s):
        reported = -1
        while not flow.done.is_set():
            changed = flow.changed
            finished = flow.finished_steps()
            if progress is not None and finished != reported:
                reported = finished
                await progress(finished, len(flow.steps), f"{finished}/{len(flow.steps)} steps ended")
                continue
            await changed.wait()
