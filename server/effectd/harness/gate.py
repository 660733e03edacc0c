"""The names of the permission gate a sub-agent asks before it acts (`approvals: "ask"`): the engine
wires them into the harness's argv, and `effectd.protocol.gate` (the gate's MCP server) serves them."""

from __future__ import annotations

TOOL = "approve"
SERVER = "effectd"
PROMPT_TOOL = f"mcp__{SERVER}__{TOOL}"
"""The name Claude Code knows the tool by (`--permission-prompt-tool`)."""
MODULE = "effectd.protocol.gate"
"""What the sub-agent's CLI runs (`python -m`) to start the gate."""
