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


READ_ONLY_TOOLS = {"poll_effect", "list_effects", "list_harnesses", "await_group", "stream_effect", "poll_flow"}
READ_ONLY_TOOLS |= {"list_approvals"}
ANSWERING_TOOLS = {"answer_approval"}  # lets a waiting sub-agent go on: not destructive, and answered only once
STOPPING_TOOLS = {"cancel_effect", "cancel_group", "set_budget"}  # set_budget: a spent limit stops effects
STARTING_TOOLS = {"dispatch_effect", "dispatch_flow"}


async def test_every_tool_has_a_title_and_hints_saying_what_a_call_may_change(client: Client) -> None:
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == READ_ONLY_TOOLS | STOPPING_TOOLS | STARTING_TOOLS | ANSWERING_TOOLS
    for name, tool in tools.items():
        hints = tool.annotations
        assert tool.title and tool.title[0].isupper() and hints is not None and hints.title == tool.title, name
        assert hints.read_only_hint is (name in READ_ONLY_TOOLS), name
        assert hints.open_world_hint is (name in STARTING_TOOLS), name
        if name in STOPPING_TOOLS:
            assert (hints.destructive_hint, hints.idempotent_hint) == (True, True), name
        if name in STARTING_TOOLS | ANSWERING_TOOLS:
            assert (hints.destructive_hint, hints.idempotent_hint) == (False, False), name


async def test_a_records_result_has_a_schema_that_says_it_is_any_json_value(client: Client) -> None:
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    poll = tools["poll_effect"].output_schema
    assert poll is not None
    result = poll["properties"]["result"]
    assert result["type"] == ["object", "array", "string", "number", "boolean", "null"]
    assert "any JSON value" in result["description"]
    listed = tools["list_effects"].output_schema
    assert listed is not None and listed["$defs"]["EffectRecord"]["properties"]["result"] == result
    # The official client validates structured output against it: every kind of result passes.
    for value in ('{"a": [1, 2.5]}', "[1]", '"text"', "7", "true"):
        code = f"import os; open(os.environ['EFFECTD_RESULT_FILE'], 'w').write({value!r})"
        record = await call(client, "dispatch_effect", command=py(code))
        assert record["result"] is not None and record["result_error"] is None
    assert len((await call(client, "list_effects"))["effects"]) == 5
