"""The MCP tool surface: thin functions that validate arguments, call the engine and shape records
(`surface.all_tools` lists them all)."""
