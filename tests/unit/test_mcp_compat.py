"""effectd.protocol.compat against the installed MCP SDK: each private object effectd reaches for is still there
and still means what effectd relies on, so an SDK release that moves one fails here, loudly.

- `lowlevel(server)`: the SDK's low-level `Server` inside an `MCPServer`, which the stdio and HTTP transports
  run on effectd's own streams and which gets the `resources/subscribe` handlers.
- `connection_of(session)`: the per-client connection behind a per-request session; effectd keeps it (weakly)
  after a `resources/subscribe` returns and later sends `notifications/resources/updated` on it.
- `arguments_of(tool)` / `set_arguments(tool, model)`: the model that validates a tool's arguments.
- `validated_arguments(tool, arguments)` / `tool_result(tool, value)`: a tool's argument check and result
  conversion, run by the MCP tasks front-end outside a tool call.
- `remove_request_handler(server, method)`: a method MCPServer serves that effectd does not (`prompts/list`).
"""

from __future__ import annotations

import warnings
import weakref
from contextlib import nullcontext
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp.shared.memory import create_client_server_memory_streams
from mcp_types import EmptyResult, ResourceUpdatedNotification, SubscribeRequestParams
from pydantic import ConfigDict, Field, ValidationError

from effectd.protocol.compat import (
    arguments_of,
    connection_of,
    lowlevel,
    remove_request_handler,
    set_arguments,
    tool_result,
    validated_arguments,
)
from tests.helpers.mcp import structured, text_of

pytestmark = pytest.mark.anyio
URI = "effectd://effects/eff_compat"


def add(a: int, b: int = 2) -> int:
    """Adds two numbers."""
    return a + b


class StrictAdd(ArgModelBase):
    """Arguments of `add` as effectd would check them: unknown names and wrong types refused."""

    model_config = ConfigDict(extra="forbid", strict=True)
    a: int = Field(gt=0)
    b: int = 5


def remembering_server() -> tuple[MCPServer[Any], list[tuple[Any, Any]]]:
    """An MCPServer with a tool that records, per call, its session and `connection_of` that session."""
    server: MCPServer[Any] = MCPServer("compat")
    seen: list[tuple[Any, Any]] = []

    @server.tool()
    async def remember(ctx: Context[Any, Any]) -> str:
        """Records the request's session and its connection."""
        seen.append((ctx.session, connection_of(ctx.session)))
        return "ok"

    return server, seen


# --- lowlevel ---------------------------------------------------------------------------------------


def test_lowlevel_is_the_sdks_low_level_server_inside_the_mcpserver() -> None:
    server: MCPServer[Any] = MCPServer("compat")
    inner = lowlevel(server)
    assert isinstance(inner, Server)
    assert inner is lowlevel(server)
    assert inner.name == server.name == "compat"
    for method in ("add_request_handler", "run", "create_initialization_options"):
        assert callable(getattr(inner, method, None)), f"the SDK's Server has no {method}()"


async def test_the_low_level_server_run_on_our_own_streams_serves_the_tools_and_the_handlers_added_to_it() -> None:
    """What `serve_stdio` does: `inner.run(read, write, inner.create_initialization_options())`, with a
    `resources/subscribe` handler added the way the resource feed adds it."""
    server: MCPServer[Any] = MCPServer("compat")
    server.add_tool(add)
    subscribed: list[str] = []

    async def on_subscribe(ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams) -> EmptyResult:
        subscribed.append(str(params.uri))
        return EmptyResult()

    inner = lowlevel(server)
    inner.add_request_handler("resources/subscribe", SubscribeRequestParams, on_subscribe)
    async with create_client_server_memory_streams() as (client_streams, (server_read, server_write)):
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(inner.run, server_read, server_write, inner.create_initialization_options())
                async with Client(nullcontext(client_streams), mode="legacy") as client:  # type: ignore[arg-type]
                    resources = client.server_capabilities.resources
                    assert resources is not None and resources.subscribe, "the added handler is not advertised"
                    result = await client.call_tool("add", {"a": 3, "b": 4})
                    assert not result.is_error and structured(result) == {"result": 7}
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", MCPDeprecationWarning)  # deprecated for 2026-07-28 only
                        await client.subscribe_resource(URI)
                await client_streams[1].aclose()  # end of input: the server's run() returns, as on stdio
    assert subscribed == [URI]


# --- connection_of ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_connection_of_a_session_is_not_the_per_request_session_and_can_send_resource_updates(
    mode: str,
) -> None:
    server, seen = remembering_server()
    async with Client(server, mode=mode) as client:
        for _ in range(2):
            result = await client.call_tool("remember", {})
            assert not result.is_error, text_of(result)
    assert len(seen) == 2
    (first_session, first), (second_session, second) = seen
    assert first_session is not second_session, "the SDK's session is no longer per request"
    for session, connection in seen:
        assert connection is not session, "connection_of fell back to the session: the SDK moved `_connection`"
        assert callable(getattr(connection, "send_resource_updated", None))
        assert weakref.ref(connection)() is connection  # kept in a WeakKeyDictionary by the resource feed
        assert {connection: 1}[connection] == 1


async def test_connection_of_is_one_connection_per_client_that_sends_updates_after_the_request_ended() -> None:
    """A 2025-protocol client: its `resources/subscribe` request ends at once, and the updates come later on
    the connection effectd kept from it; another client's connection is another object."""
    server, seen = remembering_server()
    updates: list[str] = []
    arrived = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, ResourceUpdatedNotification):
            updates.append(str(message.params.uri))
            arrived.set()

    async with Client(server, mode="legacy", message_handler=on_message) as client:
        async with Client(server, mode="legacy") as other:
            await client.call_tool("remember", {})
            await other.call_tool("remember", {})
            await client.call_tool("remember", {})
        assert len(seen) == 3
        (_, first), (_, of_other), (_, again) = seen
        assert first is again, "one client's requests do not share one connection"
        assert first is not of_other, "two clients share one connection"
        with anyio.fail_after(10):
            await first.send_resource_updated(URI)  # no request of this client is in flight now
            await arrived.wait()
    assert updates == [URI]


# --- arguments_of / set_arguments -------------------------------------------------------------------


def test_arguments_of_is_the_model_the_tool_validates_its_arguments_with() -> None:
    tool = Tool.from_function(add)
    model = arguments_of(tool)
    assert issubclass(model, ArgModelBase)
    assert set(model.model_fields) == {"a", "b"}
    assert tool.fn_metadata.validate_arguments({"a": -1}) == {"a": -1, "b": 2}  # the function's own default
    assert tool.fn_metadata.validate_arguments({"a": 4}) == model.model_validate({"a": 4}).model_dump_one_level()


def test_set_arguments_changes_what_the_tool_validates_and_the_schema_it_shows() -> None:
    tool = Tool.from_function(add)
    set_arguments(tool, StrictAdd)
    assert arguments_of(tool) is StrictAdd
    assert tool.parameters == StrictAdd.model_json_schema(by_alias=True)
    assert tool.fn_metadata.validate_arguments({"a": 1}) == {"a": 1, "b": 5}  # the new model's default
    for wrong in ({"a": -1}, {"a": "1"}, {"a": 1, "c": 2}, {}):
        with pytest.raises(ValidationError):
            tool.fn_metadata.validate_arguments(wrong)


async def test_a_server_built_with_a_tool_whose_arguments_were_set_validates_and_describes_them_that_way() -> None:
    """How effectd builds its tools: `Tool.from_function`, `set_arguments`, then `MCPServer(tools=...)`."""
    tool = Tool.from_function(add)
    set_arguments(tool, StrictAdd)
    server: MCPServer[Any] = MCPServer("compat", tools=[tool])
    async with Client(server) as client:
        (listed,) = (await client.list_tools()).tools
        assert listed.input_schema == StrictAdd.model_json_schema(by_alias=True)
        result = await client.call_tool("add", {"a": 3})
        assert not result.is_error and structured(result) == {"result": 8}  # b from StrictAdd, not from add()
        for wrong, why in (({"a": 3, "c": 1}, "c"), ({"a": "3"}, "a"), ({"a": 0}, "a")):
            result = await client.call_tool("add", wrong)
            assert result.is_error, f"{wrong} was accepted"
            assert why in text_of(result)


def test_validated_arguments_and_tool_result_are_the_tools_own_check_and_conversion() -> None:
    """What an MCP task uses to check `tools/call` arguments and to answer with the foreground result."""
    tool = Tool.from_function(add)
    set_arguments(tool, StrictAdd)
    assert validated_arguments(tool, {"a": 3}) == {"a": 3, "b": 5}
    with pytest.raises(ValidationError):
        validated_arguments(tool, {"a": "3"})
    result = tool_result(tool, 8)
    assert result["structuredContent"] == {"result": 8} and result["isError"] is False
    assert result["content"] == [{"type": "text", "text": "8"}]


async def test_remove_request_handler_stops_serving_a_method_and_advertising_it() -> None:
    server: MCPServer[Any] = MCPServer("compat")
    async with Client(server) as client:
        assert client.server_capabilities.prompts is not None
    remove_request_handler(server, "prompts/list")
    async with Client(server) as client:
        assert client.server_capabilities.prompts is None
        with pytest.raises(MCPError):
            await client.list_prompts()
