"""The configuration file's shape: strict pydantic models of its tables, and their errors as ConfigError.

`effectd.toml` holds top-level keys (limits, `db`, `runner`, `ray_address`) and the tables
`[commands]`, `[harness.NAME]`, `[http]`, `[limits]` (each effect's default `limits`) and `[sandbox]`.
`parse_config` checks a loaded table against `ConfigFile` (no unknown key, no coercion:
`max_concurrency = "4"` is refused) and turns pydantic's errors into one ConfigError that names the
key, what it takes, and the file it came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from effectd.config.http import HTTP_KEYS, HttpSettings, http_error
from effectd.errors import ConfigError
from effectd.model.arguments import SANDBOX_SHAPE, ResourceLimits, SandboxArguments
from effectd.model.records import MAX_GRACE_S

MAX_RESULT_LIMIT_BYTES = 1024 * 1024 * 1024  # a result is held in memory and journaled: 1 GiB at most

RunnerName = Literal["local", "ray"]
RUNNERS: tuple[str, ...] = get_args(RunnerName)


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class CommandsTable(_Table):
    """`[commands]`: the programs dispatch_effect may run."""

    allow: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list, description="program names or paths")
    allow_any: bool = False


class SandboxTable(_Table):
    """`[sandbox]`: whether effects run sandboxed when a dispatch does not say, and which bubblewrap runs them."""

    default: bool | SandboxArguments = False
    bwrap: str = Field(default="bwrap", min_length=1, description="the bubblewrap program: a name on PATH, or a path")


class ConfigFile(_Table):
    """The whole file. A key left out keeps the built-in default (or what the environment says)."""

    max_concurrency: int | None = Field(default=None, ge=1, le=10_000)
    default_grace_s: float | None = Field(default=None, ge=0, le=MAX_GRACE_S)
    output_limit_bytes: int | None = Field(default=None, ge=0)
    stall_after_s: float | None = Field(default=None, ge=0)
    result_grace_s: float | None = Field(default=None, ge=0, le=MAX_GRACE_S)
    result_limit_bytes: int | None = Field(default=None, ge=0, le=MAX_RESULT_LIMIT_BYTES)
    # Sessions: how often a live server looks for dead peers (at most 4 s: it sees one within 5 s), and
    # how long a server that runs an effect has to answer a cancel forwarded to it.
    peer_check_s: float | None = Field(default=None, ge=0.05, le=4)
    peer_answer_s: float | None = Field(default=None, ge=0.5, le=50)
    db: str | None = None
    commands: CommandsTable = Field(default_factory=CommandsTable)
    harness: dict[str, dict[str, Any]] = Field(default_factory=dict)  # each checked by `profile_from_config`
    groups: Any = None  # accepted and unused, as it always was
    http: HttpSettings = Field(default_factory=HttpSettings)
    sandbox: SandboxTable = Field(default_factory=SandboxTable)
    runner: RunnerName | None = None
    ray_address: str | None = None
    limits: ResourceLimits = Field(default_factory=ResourceLimits)


def parse_config(table: Mapping[str, Any], source: str | None = None) -> ConfigFile:
    """`table` (a loaded TOML file) checked; ConfigError naming the first wrong key, what it takes, and
    `source` (the file) when given."""
    try:
        return ConfigFile.model_validate(table)
    except ValidationError as exc:
        message = _message(exc.errors())
    raise ConfigError(f"{message} (config file {source})" if source else message)


def _message(errors: list[ErrorDetails]) -> str:
    unknown = sorted(str(e["loc"][0]) for e in errors if len(e["loc"]) == 1 and e["type"] == "extra_forbidden")
    if unknown:
        return f"unknown config keys {unknown}; allowed: {sorted(ConfigFile.model_fields)}"
    error = errors[0]
    loc, value = error["loc"], error["input"]
    if not loc:
        return f"the configuration must be a table of keys, not {value!r}"
    table, key = str(loc[0]), ".".join(str(part) for part in loc[1:])
    if table == "commands":
        if key.startswith("allow") and key != "allow_any":
            return "config [commands] allow must be a list of program names or paths"
        if key == "allow_any":
            return f"config [commands] allow_any must be true or false, not {value!r}"
        return "config [commands] takes `allow` (a list of programs) and `allow_any` (a boolean)"
    if table == "http":
        return http_error(key if key in HTTP_KEYS else None, value)
    if table == "limits":
        what = f"config [limits] {key}" if key else "config [limits]"
        return f"{what}: {error['msg']}, not {value!r}" if key else f"{what}: {error['msg']}"
    if table == "harness":
        return f"config [harness.{key}] must be a table" if key else "config [harness.NAME] must be tables"
    if table == "sandbox":
        if key.startswith("bwrap"):
            return f"config [sandbox] bwrap must be the bubblewrap program (a name on PATH or a path), not {value!r}"
        if key.startswith("default"):
            return f"config [sandbox] default takes {SANDBOX_SHAPE}; {error['msg']}"
        return "config [sandbox] takes `default` (the sandbox of a dispatch that names none) and `bwrap`"
    if table == "runner":
        return f"runner must be one of {', '.join(RUNNERS)}, not {value!r}"
    if table == "ray_address":
        return f"config `ray_address` must be a string (e.g. 'ray://head:10001'), not {value!r}"
    if table == "db":
        return f"config `db` must be the path of the journal file, not {value!r}"
    return _number_message(table, value)


def _number_message(key: str, value: Any) -> str:
    """`key`'s number is of the wrong kind or out of its bounds."""
    field = ConfigFile.model_fields[key]
    whole = "int" in str(field.annotation)
    if isinstance(value, bool) or not isinstance(value, int | float) or (whole and not isinstance(value, int)):
        return f"config `{key}` must be {'an integer' if whole else 'a number'}, not {value!r}"
    bounds = {name: getattr(m, name) for m in field.metadata for name in ("ge", "gt", "le") if hasattr(m, name)}
    low, above, high = bounds.get("ge"), bounds.get("gt"), bounds.get("le")
    if low is not None and high is not None:
        bound = f"between {low} and {high}"
    elif low is not None:
        bound = f"at least {low}"
    else:
        bound = f"above {above}" if above is not None else f"at most {high}"
    return f"config `{key}` must be {bound}, not {value!r}"
