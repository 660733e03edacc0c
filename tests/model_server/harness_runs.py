"""What the real-CLI tests (tests/real/) share: a run with progress, a sleeping run, a tree that is gone."""

from __future__ import annotations

from typing import Any

import anyio
from mcp import Client

from tests.helpers.mcp import call, wait_until
from tests.helpers.processes import pid_alive
from tests.model_server.processes import effect_tree, running

STARTUP_S = 120
"""Bound for a real CLI to start and reach its first tool call (generous: 2 shared cores, heavy startup)."""


async def run_with_progress(client: Client, arguments: dict[str, Any]) -> tuple[str, list[str]]:
    """Dispatches ``arguments`` with a progress callback; returns the effect's id and the progress messages."""
    messages: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    result = await client.call_tool("dispatch_effect", arguments, progress_callback=on_progress)
    assert result.structured_content is not None
    return str(result.structured_content["effect_id"]), messages


async def sleeping(
    client: Client, harness: str, prompt: str, needle: str, **options: Any
) -> tuple[dict[str, Any], dict[int, str]]:
    """Starts a run whose tool call sleeps; returns its record and process tree once ``needle`` runs."""
    record = await call(client, "dispatch_effect", harness=harness, prompt=prompt, background=True, **options)
    effect_id = record["effect_id"]
    await wait_until(lambda: needle in running(effect_id, "sleep").values(), within_s=STARTUP_S)
    tree = effect_tree(effect_id)
    record = await call(client, "poll_effect", effect_id=effect_id)
    assert record["status"] == "running" and record["pid"] in tree
    return dict(record), tree


async def sleeping_before_timeout(
    client: Client, harness: str, prompt: str, needle: str, timeouts_s: list[float], **options: Any
) -> tuple[dict[str, Any], dict[int, str]]:
    """`sleeping` for a run with a timeout: the timeout counts from the dispatch, and a CLI that starts slowly
    on a loaded machine may reach it before its tool call runs. Such a run is cancelled by its timeout before
    there is a tree to check, so it is tried again with the next, longer timeout."""
    for timeout_s in timeouts_s:
        record = await call(
            client, "dispatch_effect", harness=harness, prompt=prompt, background=True, timeout_s=timeout_s, **options
        )
        effect_id = record["effect_id"]
        with anyio.fail_after(STARTUP_S + timeout_s):
            while needle not in running(effect_id, "sleep").values():
                record = await call(client, "poll_effect", effect_id=effect_id)
                if record["status"] in ("succeeded", "failed", "cancelled", "skipped"):
                    break
                await anyio.sleep(0.05)
            else:
                tree = effect_tree(effect_id)
                record = await call(client, "poll_effect", effect_id=effect_id)
                assert record["status"] == "running" and record["pid"] in tree
                return dict(record), tree
        assert record["cancel_reason"] == "timeout", record
    raise AssertionError(f"the CLI never reached its tool call within any of the timeouts {timeouts_s}")


def tree_gone(effect_id: str, tree: dict[int, str]) -> None:
    """Every process of the effect's tree is dead and nothing else of the effect is left."""
    assert [pid for pid in tree if pid_alive(pid)] == [] and effect_tree(effect_id) == {}
