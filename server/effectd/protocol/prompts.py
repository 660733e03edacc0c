"""Prompts: effectd has none. MCPServer always serves `prompts/list` (so it advertises `prompts`) and
answers `prompts/get` of an unknown name with error code 0 and a logged traceback; here `prompts/list`
is dropped, so `prompts` is not advertised, and `prompts/get` is -32602 (invalid params), as the spec
wants for an unknown prompt."""

from __future__ import annotations

from typing import Any

from mcp.server.context import HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, GetPromptRequestParams

from effectd.protocol.compat import lowlevel, remove_request_handler


async def _get_prompt(ctx: ServerRequestContext[Any, Any], params: GetPromptRequestParams) -> HandlerResult:
    raise MCPError(INVALID_PARAMS, f"unknown prompt {params.name!r}: effectd serves no prompts")


def install(server: MCPServer[Any]) -> None:
    remove_request_handler(server, "prompts/list")
    lowlevel(server).add_request_handler("prompts/get", GetPromptRequestParams, _get_prompt)
