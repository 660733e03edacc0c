"""effectd: an MCP server that runs effects (agent CLIs and allow-listed commands) as supervised,
journaled, concurrent subprocesses. The API every front-end uses is `effectd.engine.Engine`; programs
use `effectd.api`."""
