"""What the real-CLI tests (tests/real/) share: a run with progress, a sleeping run, a tree that is gone."""

from __future__ import annotations

from typing import Any

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


def tree_gone(effect_id: str, tree: dict[int, str]) -> None:
    """Every process of the effect's tree is dead and nothing else of the effect is left."""
    assert [pid for pid in tree if pid_alive(pid)] == [] and effect_tree(effect_id) == {}
