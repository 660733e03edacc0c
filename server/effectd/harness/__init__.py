"""Harness profiles (how to launch a coding-agent CLI) and parsers (how to read its streaming output)."""
