"""Protocol details that real clients found: numbers sent as strings (the MCP Inspector CLI sends `"1"`
for a `number | null` argument), and prompts (effectd has none: not advertised, unknown is -32602)."""

from __future__ import annotations

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS

from effectd.engine.core import Engine
from tests.helpers.http import http_client, serving
from tests.helpers.mcp import call, call_error
from tests.helpers.processes import py

pytestmark = pytest.mark.anyio


async def test_a_number_sent_as_a_string_is_taken_as_the_number(client: Client) -> None:
    record = await call(client, "dispatch_effect", command=py("print(1)"), timeout_s="30", wait_s="20", grace_s="0.5")
    assert record["status"] == "succeeded"
    slow = await call(client, "dispatch_effect", command=py("import time; time.sleep(60)"), background=True)
    cancelled = await call(client, "cancel_effect", effect_id=slow["effect_id"], grace_s="0.2")
    assert cancelled["status"] == "cancelled"
    flow = await call(client, "dispatch_flow", steps=[{"id": "a", "command": py("1")}], max_concurrency="2")
    assert flow["status"] == "succeeded" and flow["max_concurrency"] == 2


async def test_other_strings_where_a_number_is_expected_are_still_refused(client: Client) -> None:
    for arguments in ({"timeout_s": "soon"}, {"timeout_s": "1s"}, {"max_attempts": "1.5"}, {"timeout_s": ""}):
        error = await call_error(client, "dispatch_effect", command=py("1"), background=True, **arguments)
        assert next(iter(arguments)) in error
    assert "timeout_s" in await call_error(client, "dispatch_effect", command=py("1"), timeout_s=True)
    assert "label" in await call_error(client, "dispatch_effect", command=py("1"), label=5)


async def test_prompts_are_not_advertised_and_an_unknown_prompt_is_invalid_params(engine: Engine) -> None:
    async with serving(engine) as url:
        for mode in ("auto", "legacy"):
            async with http_client(url, mode=mode) as client:
                assert client.server_capabilities.prompts is None
                with pytest.raises(MCPError) as raised:
                    await client.get_prompt("nope")
                assert raised.value.error.code == INVALID_PARAMS and "nope" in raised.value.error.message
