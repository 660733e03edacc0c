"""The permission gate a sub-agent asks before it acts (`approvals: "ask"`, issue 25).

A tiny stdio MCP server with one tool, `approve`, that Claude Code calls through
`--permission-prompt-tool mcp__effectd__approve` before each tool use its own permissions do not
allow. It runs as the sub-agent's child, started from the `--mcp-config` file effectd wrote for the
effect, and forwards each request over a Unix socket to the effectd server that runs the effect
(`EFFECTD_GATE_SOCKET`, with the effect's id and a token only that file holds). The server decides
(a rule, an orchestrator's `answer_approval`, the dashboard, the command line, or the timeout) and the
answer comes back on the same connection.

The tool's result is one text block holding Claude Code's permission JSON, `{"behavior": "allow",
"updatedInput": {...}}` or `{"behavior": "deny", "message": "..."}`, and nothing else: Claude Code
refuses a result that also carries structured content. When the server cannot be reached, the
answer is a denial that says so: a sub-agent never acts unasked.

Run as `python -m effectd.protocol.gate`; the names the sub-agent's CLI knows it by are in
`effectd.harness.gate`.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer

from effectd.harness.gate import TOOL

MAX_ANSWER = 1 << 20


def _ask(path: str, request: dict[str, Any]) -> dict[str, Any]:
    """One request over the server's socket; blocks until the answer (on a worker thread)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(path)
        conn.sendall(json.dumps(request).encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
            if len(answer) > MAX_ANSWER:
                raise OSError("the answer is too long")
    reply = json.loads(answer)
    if not isinstance(reply, dict) or reply.get("behavior") not in ("allow", "deny"):
        raise OSError(f"not an answer: {answer[:200]!r}")
    return reply


def build() -> MCPServer:
    gate = MCPServer("effectd-gate")

    @gate.tool(name=TOOL, structured_output=False)
    async def approve(tool_name: str, input: dict[str, Any], tool_use_id: str | None = None) -> str:  # noqa: A002
        """Asks effectd (the orchestrator that dispatched this agent) whether this tool use may go ahead."""
        request = {
            "token": os.environ.get("EFFECTD_GATE_TOKEN", ""),
            "effect_id": os.environ.get("EFFECTD_EFFECT_ID", ""),
            "tool": tool_name,
            "input": input,
            "tool_use_id": tool_use_id,
        }
        try:
            reply = await anyio.to_thread.run_sync(_ask, os.environ.get("EFFECTD_GATE_SOCKET", ""), request)
        except (OSError, ValueError) as exc:
            reply = {"behavior": "deny", "message": f"effectd could not be asked ({exc}), so this is denied"}
        if reply["behavior"] == "allow":
            return json.dumps({"behavior": "allow", "updatedInput": reply.get("updatedInput", input)})
        return json.dumps({"behavior": "deny", "message": reply.get("message") or "denied"})

    return gate


def main() -> None:
    build().run("stdio")


if __name__ == "__main__":
    main()
