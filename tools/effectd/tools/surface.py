"""Every MCP tool effectd serves, in the order `tools/list` shows them."""

from __future__ import annotations

from mcp.server.mcpserver.tools import Tool

from effectd.tools import approvals, budgets, effects, flows, streams


def all_tools() -> list[Tool]:
    return [*effects.tools(), *streams.tools(), *flows.tools(), *budgets.tools(), *approvals.tools()]
