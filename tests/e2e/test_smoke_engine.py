"""A first end-to-end check through the in-memory MCP client."""

from __future__ import annotations

import pytest

from tests.helpers.mcp import call
from tests.helpers.processes import py

pytestmark = pytest.mark.anyio


async def test_a_foreground_command_returns_its_finished_record(client):
    record = await call(client, "dispatch_effect", command=py("print('hello')"))
    assert record["status"] == "succeeded"
    assert record["output_tail"] == "hello\n"
