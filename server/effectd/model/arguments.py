"""The arguments of an effect, declared once: `dispatch_effect` and flow steps both take `EffectArguments`.

- `EffectArguments`: what to run and under which limits (shared by every front-end and by flow steps).
- `EffectRequest`: those plus where the effect goes (run, group, dependencies): what `Engine.dispatch` takes.
- `DispatchArguments`: those plus how the MCP caller waits: the `dispatch_effect` tool's arguments.
- `Limits`: a budget's limits, as `set_budget` and `dispatch_flow`'s `budget` take them.
- `ResourceLimits`: what an effect's own cgroup lets it use (`limits`, and the config's `[limits]`).

The models are strict (no coercion of a string into a number, no silently dropped unknown name), so a
misspelled `timout_s` is refused with the list of the names allowed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from effectd.model.records import Duration, Grace, Name, Wait


class _Strict(BaseModel):
    """Refuses unknown names, naming the allowed ones (and, where one is known, saying where it belongs)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # Names that belong elsewhere, with the reason given when they are sent here.
    _misplaced: ClassVar[dict[str, str]] = {}
    _where: ClassVar[str] = "an effect"  # what an unknown name is said to be in

    @model_validator(mode="before")
    @classmethod
    def _only_known_names(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            unknown = sorted(set(data) - set(cls.model_fields))
            if unknown:
                where = f"step {data.get('id')!r}" if "id" in cls.model_fields else cls._where
                notes = "".join(f" (`{name}` is {cls._misplaced[name]})" for name in unknown if name in cls._misplaced)
                raise PydanticCustomError(
                    "unknown_argument",
                    "unknown argument {unknown} in {where}{notes}; it takes: {allowed}",
                    {
                        "unknown": ", ".join(unknown),
                        "where": where,
                        "notes": notes,
                        "allowed": ", ".join(sorted(cls.model_fields)),
                    },
                )
        return data


# --- sandbox ----------------------------------------------------------------------------------

SANDBOX_SHAPE = (
    'true, false or {"network": "none" | "all" | {"allow": ["HOST:PORT", ...]}, "write": [paths], "hide": [paths]}'
)
HostPort = Annotated[
    str,
    Field(
        pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9._-]*):[0-9]{1,5}$",
        description="a host name or address and a port, e.g. 'api.anthropic.com:443' or '127.0.0.1:8080'",
    ),
]
SandboxPath = Annotated[str, Field(min_length=1, pattern=r"^[^\x00]*$", description="an absolute path, or ~/...")]


class NetworkAllow(_Strict):
    """Only these hosts and ports, through effectd's proxy."""

    _where = "`sandbox.network`"

    allow: list[HostPort]


class SandboxArguments(_Strict):
    """What a sandboxed effect may reach: its network, the paths it may write, the paths it must not see."""

    _where = "`sandbox`"

    network: Annotated[
        Literal["none", "all"] | NetworkAllow,
        Field(description='"none": its own loopback only; "all": the host\'s network; {"allow": ["HOST:PORT"]}'),
    ] = "none"
    write: Annotated[list[SandboxPath], Field(description="paths it may write besides its cwd and TMPDIR")] = []
    hide: Annotated[list[SandboxPath], Field(description="paths it must not see at all")] = []


def sandbox_value(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """`sandbox` checked, or one error that names the allowed shapes (not pydantic's one error per union branch)."""
    try:
        return handler(value)
    except ValidationError as exc:
        detail = f"not {value!r}"
        if isinstance(value, Mapping):
            # The table's own errors (not the `bool` branch's); for `network`, the branch its value took.
            network = value.get("network")
            branch = "NetworkAllow" if isinstance(network, Mapping) else "literal"
            errors = [e for e in exc.errors() if e["loc"][:1] == ("SandboxArguments",)]
            errors = [e for e in errors if e["loc"][1:2] != ("network",) or str(e["loc"][2]).startswith(branch)]
            if errors:
                loc = [part for part in errors[0]["loc"][1:] if not str(part).startswith(("NetworkAllow", "literal"))]
                where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)
                detail = f"sandbox{where}: {errors[0]['msg']}"
                if where.startswith(".network.allow["):
                    detail = f"sandbox{where} is not HOST:PORT"
        raise PydanticCustomError(
            "sandbox", "`sandbox` takes {shape}; {detail}", {"shape": SANDBOX_SHAPE, "detail": detail}
        ) from None


MAX_MEMORY_MB = 1 << 30  # 1 PiB: more than any machine has, less than the kernel's counters hold
MAX_PIDS = 4_194_304  # PID_MAX_LIMIT
MAX_CPU = 65_536.0


class ResourceLimits(BaseModel):
    """`limits`: what the effect's own cgroup lets it use; a limit left out is not set (or the config's)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    memory_mb: int | None = Field(
        default=None, ge=16, le=MAX_MEMORY_MB, description="MiB of memory, at least 16; past it the effect is killed"
    )
    pids: int | None = Field(
        default=None, ge=1, le=MAX_PIDS, description="processes and threads at once, at least 1; a fork past it fails"
    )
    cpu: float | None = Field(default=None, gt=0, le=MAX_CPU, allow_inf_nan=False, description="cores, e.g. 0.5")

    @model_validator(mode="before")
    @classmethod
    def _only_known_limits(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and (unknown := sorted(set(data) - set(cls.model_fields))):
            raise PydanticCustomError(
                "unknown_limit",
                "unknown limit {unknown} in `limits`; it takes: memory_mb (MiB, at least 16), pids (at least 1), "
                "cpu (cores, above 0)",
                {"unknown": ", ".join(map(str, unknown))},
            )
        return data

    def given(self) -> dict[str, float]:
        """The limits set, by name (none: {})."""
        return {name: value for name, value in self.model_dump().items() if value is not None}


class ApprovalRule(_Strict):
    """One of `approval_rules`: the first rule whose tool (and input pattern) matches a request decides it."""

    _where = "`approval_rules`"

    tool: Annotated[str, Field(min_length=1, max_length=200, description='the tool asked for, e.g. "Write"; "*": any')]
    input_matches: Annotated[
        str | None,
        Field(max_length=2000, description="a regular expression searched in the tool input's JSON (absent: any)"),
    ] = None
    decision: Literal["allow", "deny"]

    @field_validator("input_matches")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"input_matches {value!r} is not a regular expression: {exc}") from None
        return value


class EffectArguments(_Strict):
    """The arguments of one effect, as dispatch_effect and a flow step take them."""

    command: Annotated[list[str] | None, Field(description="argv list, never a shell string")] = None
    harness: Annotated[Name | None, Field(description="harness profile name (see list_harnesses)")] = None
    prompt: Annotated[str | None, Field(description="the prompt for the harness")] = None
    args: Annotated[list[str] | None, Field(description="extra arguments for the harness CLI")] = None
    label: Annotated[str | None, Field(max_length=1000)] = None
    key: Annotated[Name | None, Field(description="idempotency key within the run")] = None
    timeout_s: Annotated[Duration | None, Field(description="cancel after this long running")] = None
    idle_timeout_s: Annotated[Duration | None, Field(description="cancel after this long with no output")] = None
    grace_s: Annotated[Grace | None, Field(description="SIGTERM to SIGKILL, default 5")] = None
    cwd: str | None = None
    env: Annotated[dict[str, str] | None, Field(description="merged over the server's environment")] = None
    stdin: str | None = None
    max_attempts: Annotated[int, Field(ge=1, le=100, description="attempts for a failing effect")] = 1
    retry_backoff_s: Annotated[float, Field(ge=0, le=3600, description="wait before retry n: this * 2^(n-1)")] = 0
    isolation: Annotated[
        Literal["none", "worktree"],
        Field(description='"worktree": run in a git worktree of its own, on branch effectd/<effect_id>'),
    ] = "none"
    worktree_base: Annotated[Name | None, Field(description="git ref the worktree starts at (default HEAD of cwd)")] = (
        None
    )
    keep_worktree: Annotated[bool, Field(description="keep the worktree directory when the effect ends")] = False
    resources: Annotated[
        dict[str, float] | None,
        Field(description="Ray resources the effect needs, e.g. {'GPU': 1}: it runs on a node that has them"),
    ] = None
    sandbox: Annotated[
        bool | SandboxArguments | None,
        Field(
            description="run it in a bubblewrap sandbox: true (network none, or the harness profile's), false, "
            'or {"network": "none" | "all" | {"allow": ["HOST:PORT"]}, "write": [paths], "hide": [paths]}; '
            "default: the server's [sandbox] default (false)"
        ),
    ] = None

    _sandbox = field_validator("sandbox", mode="wrap")(sandbox_value)
    # --- limits (issue 23): enforced by the effect's own cgroup ---
    limits: Annotated[
        ResourceLimits | None,
        Field(description="{memory_mb, pids, cpu}: enforced by the effect's own cgroup; defaults in [limits]"),
    ] = None

    # --- approvals (issue 25): the sub-agent asks before it acts ---
    approvals: Annotated[
        Literal["off", "ask"] | None,
        Field(description='"ask": the harness sub-agent asks before each tool use it is not allowed (default "off")'),
    ] = None
    approval_rules: Annotated[
        list[ApprovalRule] | None,
        Field(
            max_length=100, description='[{"tool", "input_matches"?, "decision": "allow" | "deny"}]; first match wins'
        ),
    ] = None
    approval_timeout_s: Annotated[
        float | None,
        Field(gt=0, le=86_400, allow_inf_nan=False, description="deny what is unanswered after this (600)"),
    ] = None

    def effect_fields(self) -> dict[str, Any]:
        """The effect's own arguments (without where it goes or how a caller waits), as `build_spec` takes them."""
        return self.model_dump(include=set(EffectArguments.model_fields))


class EffectRequest(EffectArguments):
    """One effect and where it goes: the argument of `Engine.dispatch`."""

    group: Name | None = None
    run_id: Name | None = None
    depends_on: Annotated[list[str] | None, Field(description="effect ids that must succeed first")] = None
    group_max_concurrency: Annotated[
        int | None, Field(ge=1, le=10_000, description="cap on running effects of `group` (first dispatch sets it)")
    ] = None


class DispatchArguments(EffectRequest):
    """The `dispatch_effect` tool's arguments: an effect request and how the caller waits for it."""

    background: Annotated[bool, Field(description="return at once instead of waiting")] = False
    wait_s: Annotated[Wait, Field(description="foreground: wait at most this long (<= 55 s)")] = 25.0

    def request(self) -> EffectRequest:
        # Already validated: the same fields, without a second validation.
        return EffectRequest.model_construct(**{name: getattr(self, name) for name in EffectRequest.model_fields})


class Limits(BaseModel):
    # Also what `set_budget` sets. The docstring is the tool schema's description: changing it changes
    # dispatch_flow's inputSchema.
    """`dispatch_flow`'s `budget`: the limits on what the flow's harness steps may spend."""

    model_config = ConfigDict(extra="forbid", strict=True)

    max_cost_usd: float | None = Field(default=None, ge=0, le=1e9, description="US dollars")
    max_tokens: int | None = Field(default=None, ge=0, le=10**15, description="input plus output tokens")
