"""What the real-CLI tests (tests/test_real_*.py) share: fixtures, a run with progress, a sleeping run.

Each test module names its CLI, its script and how the effect's ``env`` reaches the model server;
the fixtures and helpers here do the rest the same way for every CLI.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from tests.helpers.mcp import call, wait_until
from tests.helpers.processes import pid_alive
from tests.model_server.clis import require
from tests.model_server.processes import effect_tree, running
from tests.model_server.script import Script
from tests.model_server.server import ModelServer

STARTUP_S = 120
"""Bound for a real CLI to start and reach its first tool call (generous: 2 shared cores, heavy startup)."""


def cli_fixtures(
    name: str, script: Script, make_env: Callable[[ModelServer, Path], dict[str, str]], env_dir: str
) -> tuple[Any, Any, Any, Any]:
    """The fixtures of one CLI's test module: ``<name>`` (its binary), ``on_path``, ``model`` and ``env``.

    A module binds them at top level: ``claude, on_path, model, env = cli_fixtures("claude", ...)``.
    """

    @pytest.fixture(scope="module", name=name)
    def binary() -> Path:
        return require(name)

    @pytest.fixture(autouse=True)
    def on_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
        """The CLI on the server's PATH, as after `npm install -g` (before the engine starts)."""
        found: Path = request.getfixturevalue(name)
        monkeypatch.setenv("PATH", f"{found.parent}{os.pathsep}{os.environ['PATH']}")

    @pytest.fixture
    def model() -> Iterator[ModelServer]:
        with ModelServer(script) as server:
            yield server

    @pytest.fixture
    def env(model: ModelServer, tmp_path: Path) -> dict[str, str]:
        return make_env(model, tmp_path / env_dir)

    return binary, on_path, model, env


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
