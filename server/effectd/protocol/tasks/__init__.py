"""MCP tasks: effects and flows served as tasks of `io.modelcontextprotocol/tasks` (SEP-2663)."""
