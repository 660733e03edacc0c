"""What every tool module shares: strict argument models, engine access, error translation."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

from effectd.engine import Engine
from effectd.errors import EffectdError
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase
from pydantic import ConfigDict, create_model, model_validator
from pydantic_core import PydanticCustomError


def engine_of(ctx: Context[Any, Any]) -> Engine:
    return cast(Engine, ctx.request_context.lifespan_context)


@contextmanager
def refusals() -> Iterator[None]:
    """Turns effectd's own errors into MCP tool errors (is_error with the message)."""
    try:
        yield
    except EffectdError as exc:
        raise ToolError(str(exc)) from exc


def _not_unicode(value: Any, path: tuple[str, ...]) -> str | None:
    """The path of the first string in `value` that cannot be encoded as UTF-8, if any."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return ".".join(path) or "(value)"
        return None
    items: Any = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and _not_unicode(key, path) is not None:
            return ".".join((*path, "(a key)"))
        found = _not_unicode(item, (*path, str(key)))
        if found is not None:
            return found
    return None


def strict_tool(fn: Callable[..., Any]) -> Tool:
    """A tool whose arguments are checked strictly: wrong types and unknown names are refused, not dropped."""
    tool = Tool.from_function(fn, description=inspect.cleandoc(fn.__doc__ or ""))
    base = tool.fn_metadata.arg_model
    allowed = sorted(field.alias or name for name, field in base.model_fields.items())

    class StrictArguments(base):  # type: ignore[misc,valid-type]
        model_config = ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True)

        @model_validator(mode="before")
        @classmethod
        def _only_known_names(cls, data: Any) -> Any:
            if isinstance(data, dict):
                unknown = sorted(set(data) - set(allowed))
                if unknown:
                    raise PydanticCustomError(
                        "unknown_argument",
                        "unknown argument {unknown}; {tool} takes: {allowed}",
                        {"unknown": ", ".join(unknown), "tool": tool.name, "allowed": ", ".join(allowed)},
                    )
                where = _not_unicode(data, ())
                if where is not None:
                    raise PydanticCustomError(
                        "invalid_unicode",
                        "argument {where} holds text that is not valid Unicode (a lone surrogate); send UTF-8 text",
                        {"where": where},
                    )
            return data

    # Named after the tool, so a validation error says which tool's arguments were wrong.
    named = cast(type[ArgModelBase], create_model(f"{tool.name}_arguments", __base__=StrictArguments))
    tool.fn_metadata.arg_model = named
    tool.parameters = named.model_json_schema(by_alias=True)
    return tool
