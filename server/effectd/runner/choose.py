"""Which runner a server uses: the local one, or the Ray runner (imported only when asked for)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio

from effectd.runner.base import Runner
from effectd.runner.local import LocalRunner

if TYPE_CHECKING:
    from effectd.config.settings import Settings


@asynccontextmanager
async def open_runner(settings: Settings, given: Runner | None = None) -> AsyncIterator[Runner]:
    """`given` as it is, else a new runner of the settings' kind ("local" or "ray"), closed when the block
    ends. The Ray runner joins the cluster at `ray_address`, or starts a local Ray (stopped at the end)."""
    if given is not None:
        yield given
        return
    runner: Runner
    if settings.runner == "ray":
        from effectd.runner.ray_runner import RayRunner

        ray_runner = RayRunner(settings.ray_address)
        ray_runner.connect()
        runner = ray_runner
    else:
        runner = LocalRunner(bwrap=settings.sandbox.bwrap)
    try:
        yield runner
    finally:
        with anyio.CancelScope(shield=True):
            await runner.aclose()
