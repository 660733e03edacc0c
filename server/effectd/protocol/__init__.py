"""The MCP protocol beyond tools: the tasks extension, resources, prompts, the SDK shim."""
