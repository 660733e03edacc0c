"""mkdocs hook: the tool reference, generated at build time from the tools' own schemas.

It opens an engine on a temporary journal, builds the MCP server the way `effectd serve` does
(`effectd.app.build_server`), asks it for its tools through an in-memory `mcp.Client`, and writes
each tool's name, title, hints (its MCP annotations), description, arguments, input schema and output
schema in place of the marker `<!-- tools-reference -->` of `reference/tools.md`. The page cannot drift
from the code: it is the code's answer to `tools/list`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

MARKER = "<!-- tools-reference -->"


async def _tools() -> list[Any]:
    from mcp import Client

    from effectd.app import build_server
    from effectd.config.settings import build_settings
    from effectd.engine.core import Engine

    with tempfile.TemporaryDirectory() as scratch:
        settings = build_settings({}, db=Path(scratch) / "journal.db")
        async with Engine.open(settings) as engine, Client(build_server(engine)) as client:
            return list((await client.list_tools()).tools)


def _type(schema: dict[str, Any]) -> str:
    """A short type for the arguments table: `string`, `array of string`, `number or null`, ..."""
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " or ".join(_type(option) for option in schema["anyOf"])
    if "enum" in schema:
        return " or ".join(f"`{json.dumps(value)}`" for value in schema["enum"])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    kind = schema.get("type", "any")
    if kind == "array" and "items" in schema:
        return f"array of {_type(schema['items'])}"
    if isinstance(kind, list):
        return " or ".join(kind)
    return str(kind)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _schema_block(title: str, schema: dict[str, Any] | None) -> list[str]:
    if not schema:
        return []
    body = json.dumps(schema, indent=2, ensure_ascii=False)
    return [f'??? note "{title}"', "", "    ```json", *(f"    {line}" for line in body.splitlines()), "    ```", ""]


def _hints(annotations: Any) -> str:
    """The tool's MCP annotations in words: what a call may change."""
    if annotations is None:
        return "no hints"
    if annotations.read_only_hint:
        words = ["read-only"]
    else:
        words = ["destructive" if annotations.destructive_hint else "additive"]
        words.append("idempotent" if annotations.idempotent_hint else "not idempotent")
    words.append("open world" if annotations.open_world_hint else "closed world")
    return ", ".join(words)


def render(tools: list[Any]) -> str:
    out = [f"effectd serves {len(tools)} tools: " + ", ".join(f"[`{t.name}`](#{t.name})" for t in tools) + ".", ""]
    for tool in tools:
        schema = tool.input_schema or {}
        required = set(schema.get("required", []))
        out += [f"## `{tool.name}`", "", f"**{tool.title}** ({_hints(tool.annotations)})", ""]
        out += [(tool.description or "").strip(), ""]
        properties = schema.get("properties", {})
        if properties:
            out += ["| argument | type | default | description |", "|---|---|---|---|"]
            for name, prop in properties.items():
                default = "required" if name in required else f"`{json.dumps(prop.get('default'))}`"
                description = prop.get("description", "")
                out.append(f"| `{name}` | {_cell(_type(prop))} | {_cell(default)} | {_cell(description)} |")
            out.append("")
        else:
            out += ["No arguments.", ""]
        out += _schema_block("Input schema", schema)
        out += _schema_block("Output schema", tool.output_schema)
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if MARKER not in markdown:
        return markdown
    import anyio

    return markdown.replace(MARKER, render(anyio.run(_tools)))
