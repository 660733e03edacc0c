"""Every place effectd reaches past the MCP SDK's public surface, in one module (pinned to mcp 2.x).

`tests/test_mcp_compat.py` checks each of these against the installed SDK, so an SDK release that
moves one fails loudly there instead of somewhere deep in a transport.

- `lowlevel(server)`: the low-level `Server` inside an `MCPServer`, for the stdio and HTTP transports
  (which run it on our own streams) and for the `resources/subscribe` handlers MCPServer does not
  register.
- `connection_of(session)`: the per-client connection behind a per-request session, which outlives
  the request (how a 2025-protocol `resources/subscribe` is answered later).
- `set_arguments(tool, model)`: a tool's argument model, replaced by a strict one (unknown names and
  wrong types refused, not dropped or coerced).
- `remove_request_handler(server, method)`: a method MCPServer registers that effectd does not serve
  (`prompts/list`: effectd has no prompts, so it must not advertise them).
- `validated_arguments(tool, arguments)`, `tool_result(tool, value)`: a tool's argument check and its
  result conversion, run outside a tool call (an MCP task answers with the foreground call's result).
"""

from __future__ import annotations

from typing import Any

from mcp.server.lowlevel import Server
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase


def lowlevel(server: MCPServer[Any]) -> Server[Any]:
    """The low-level server that `MCPServer` wraps."""
    inner: Server[Any] = server._lowlevel_server
    return inner


def connection_of(session: Any) -> Any:
    """The connection that carries a session's notifications and outlives its request (else the session)."""
    return getattr(session, "_connection", session)


def set_arguments(tool: Tool, model: type[ArgModelBase]) -> None:
    """Makes `model` validate the tool's arguments and describe them in its input schema."""
    tool.fn_metadata.arg_model = model
    tool.parameters = model.model_json_schema(by_alias=True)


def arguments_of(tool: Tool) -> type[ArgModelBase]:
    """The model that validates the tool's arguments."""
    return tool.fn_metadata.arg_model


def validated_arguments(tool: Tool, arguments: dict[str, Any]) -> dict[str, Any]:
    """The tool's arguments as its function receives them (pydantic's ValidationError when it would
    refuse them)."""
    return tool.fn_metadata.validate_arguments(arguments)


def tool_result(tool: Tool, value: Any) -> dict[str, Any]:
    """The `CallToolResult` (as wire JSON) the tool answers when its function returns `value`."""
    result = tool.fn_metadata.convert_result(value)
    return result.model_dump(by_alias=True, mode="json", exclude_none=True)


def remove_request_handler(server: MCPServer[Any], method: str) -> None:
    """Stops serving `method` (the low-level server derives its capabilities from what it serves)."""
    lowlevel(server)._request_handlers.pop(method, None)
