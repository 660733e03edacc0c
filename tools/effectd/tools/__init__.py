"""The MCP tool surface: thin functions that validate arguments, call the engine and shape records."""

from __future__ import annotations

from mcp.server.mcpserver.tools import Tool


def all_tools() -> list[Tool]:
    from effectd.tools import budgets, effects, flows, streams

    return [*effects.tools(), *streams.tools(), *flows.tools(), *budgets.tools()]
