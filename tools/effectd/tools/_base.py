"""What every tool module shares: strict argument models, engine access, error translation."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import ArgModelBase
from mcp.types import ToolAnnotations
from pydantic import BaseModel, ConfigDict, create_model, model_validator
from pydantic_core import PydanticCustomError

from effectd.engine.core import Engine, ProgressSink
from effectd.errors import EffectdError
from effectd.protocol.compat import arguments_of, set_arguments


def engine_of(ctx: Context[Any, Any]) -> Engine:
    return cast(Engine, ctx.request_context.lifespan_context)


def progress_of(ctx: Context[Any, Any]) -> ProgressSink:
    """The caller's MCP progress notifications (sent only when the client gave a progress token)."""

    async def report(progress: float, total: float | None, message: str) -> None:
        await ctx.report_progress(progress, total, message)

    return report


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


_INTEGER = re.compile(r"^[+-]?\d+$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _numeric_fields(schema: dict[str, Any]) -> dict[str, str]:
    """The arguments whose JSON type is a number (`number` or `integer`) and never a string."""
    found: dict[str, str] = {}
    for name, prop in schema.get("properties", {}).items():
        types = {prop.get("type")} | {option.get("type") for option in prop.get("anyOf", [])}
        if "string" not in types and types & {"number", "integer"}:
            found[name] = "number" if "number" in types else "integer"
    return found


def _numbers_from_strings(data: dict[str, Any], numeric: dict[str, str]) -> dict[str, Any]:
    """A number sent as a string (the MCP Inspector CLI sends `"1"` for a `number | null`) becomes the
    number; any other string stays as it is, and is refused."""
    converted = dict(data)
    for name, kind in numeric.items():
        value = data.get(name)
        if isinstance(value, str):
            text = value.strip()
            if _INTEGER.match(text):
                converted[name] = int(text)
            elif kind == "number" and _NUMBER.match(text):
                converted[name] = float(text)
    return converted


READS = ToolAnnotations(read_only_hint=True, open_world_hint=False)
"""The hints of a tool that only reads (or waits on) what effectd holds."""

STARTS = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=True)
"""The hints of a tool that starts work: each call adds effects, which run commands and agent CLIs
that reach beyond the server (a repeated `key` returns the first effect, but a call without one starts more)."""

STOPS = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False)
"""The hints of a tool that stops effects (kills their processes): asked again, it changes nothing more."""


def strict_tool(
    fn: Callable[..., Any], arguments: type[BaseModel] | None = None, *, title: str, hints: ToolAnnotations
) -> Tool:
    """A tool whose arguments are checked strictly: wrong types and unknown names are refused, not dropped.

    The arguments are the function's own parameters, or the fields of `arguments` (a model shared
    with other front-ends), which the function then receives as keywords. `title` is the name a
    client shows a person; `hints` say what a call may change (READS, STARTS, STOPS).
    """
    annotations = hints.model_copy(update={"title": title})
    tool = Tool.from_function(fn, title=title, description=inspect.cleandoc(fn.__doc__ or ""), annotations=annotations)
    base: type[BaseModel] = arguments_of(tool) if arguments is None else arguments
    allowed = sorted(field.alias or name for name, field in base.model_fields.items())
    numeric: dict[str, str] = {}  # read from the strict model's schema once it is built (below)

    # The SDK calls the tool with `model_dump_one_level()` of its argument model: an ArgModelBase.
    shared = base if issubclass(base, ArgModelBase) else create_model(base.__name__, __base__=(ArgModelBase, base))

    def _only_known_names(cls: type[BaseModel], data: Any) -> Any:
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
            return _numbers_from_strings(data, numeric)
        return data

    # One model, named after the tool, so a validation error says which tool's arguments were wrong
    # (built by the metaclass in one step, as a class statement would: each model built costs start-up).
    metaclass: Any = type(shared)  # pydantic's ModelMetaclass
    strict = metaclass(
        f"{tool.name}_arguments",
        (shared,),
        {
            "__module__": __name__,
            "model_config": ConfigDict(extra="forbid", strict=True, arbitrary_types_allowed=True),
            "_only_known_names": model_validator(mode="before")(_only_known_names),  # a classmethod (by `cls`)
        },
    )
    set_arguments(tool, cast(type[ArgModelBase], strict))
    numeric.update(_numeric_fields(tool.parameters))  # the schema set_arguments built: not built twice
    return tool
