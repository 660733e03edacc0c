"""Harness profiles: how to launch a coding-agent CLI with a prompt, and which parser reads its output."""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

from effectd.harness.parsers import PARSERS

PROMPT = "{prompt}"
"""Placeholder replaced by the prompt inside any argv element (plain text replacement)."""

ARGS = "{args}"
"""An argv element exactly equal to this is replaced by the dispatch's extra args."""

PROMPT_VIA = ("arg", "stdin")
MAX_TIMEOUT_S = 7 * 24 * 3600.0

PromptVia = Literal["arg", "stdin"]
APPROVAL_HOOKS = ("claude",)
"""The permission hooks effectd can give a sub-agent for `approvals: "ask"`, by the CLI that takes them."""


def _frozen_env() -> Mapping[str, str]:
    """An empty read-only environment."""
    return MappingProxyType({})


@dataclass(frozen=True)
class HarnessProfile:
    """A named way to run one coding-agent CLI: argv template, parser, environment and limits."""

    name: str
    command: tuple[str, ...]
    parser: str
    env: Mapping[str, str] = field(default_factory=_frozen_env, hash=False)
    timeout_s: float | None = None
    cwd: str | None = None
    prompt_via: PromptVia = "arg"
    max_concurrency: int | None = None
    description: str = ""
    resources: Mapping[str, float] | None = field(default=None, hash=False)  # Ray resources its effects need
    # The sandbox a `sandbox: true` run of this profile gets ({network, write, hide}); None: the built-in one.
    sandbox: Mapping[str, Any] | None = field(default=None, hash=False)
    # The permission hook its CLI offers for `approvals: "ask"` ("claude": `--permission-prompt-tool` with an
    # MCP server given by `--mcp-config`); None: the CLI has none, and "ask" is refused.
    approvals: Literal["claude"] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "command", tuple(self.command))
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))
        if not self.command:
            raise ValueError(f"harness profile {self.name!r}: command is empty")
        if self.parser not in PARSERS:
            raise ValueError(f"harness profile {self.name!r}: parser {self.parser!r}; allowed: {', '.join(PARSERS)}")
        if self.prompt_via not in PROMPT_VIA:
            raise ValueError(f"harness profile {self.name!r}: prompt_via {self.prompt_via!r}; allowed: arg, stdin")

    @property
    def executable(self) -> str:
        """The program the profile runs: the first element of its command."""
        return self.command[0]

    def resolve_executable(self) -> str | None:
        """The absolute path the executable resolves to on the profile's PATH, or None when it is not found."""
        found = shutil.which(self.executable, path=self.env.get("PATH"))
        return os.path.abspath(found) if found else None

    def build_argv(self, prompt: str, args: Sequence[str]) -> list[str]:
        """The argv for one run: ``{prompt}`` replaced inside elements, ``args`` at ``{args}`` (else at the end)."""
        if prompt.startswith("-"):
            # A prompt standing alone as an argument must not be read as one of the CLI's options
            # (a template filled from another step's output could start with `--`): a leading space
            # keeps it a positional argument and means nothing to the model.
            prompt = " " + prompt
        argv: list[str] = []
        spliced = False
        for element in self.command:
            if element == ARGS:
                argv.extend(args)
                spliced = True
            elif self.prompt_via == "arg":
                argv.append(element.replace(PROMPT, prompt))
            else:
                argv.append(element)
        if not spliced:
            argv.extend(args)
        return argv

    def default_sandbox(self, env: Mapping[str, str]) -> dict[str, Any]:
        """The sandbox of a run that asks `sandbox: true`: the profile's own (`[harness.NAME] sandbox`), else,
        for a built-in CLI, network to its model API only (the hosts below, and where a base-URL variable of
        `env` points, such as ANTHROPIC_BASE_URL) and its config folders writable; else network "none"."""
        if self.sandbox is not None:
            return dict(self.sandbox)
        known = _SANDBOXES.get(self.name)
        if known is None:
            return {"network": "none"}
        hosts, variables, folders = known
        allow = list(hosts)
        for variable in variables:
            if (address := _host_port(env.get(variable) or os.environ.get(variable))) and address not in allow:
                allow.append(address)
        home = env.get("HOME") or os.path.expanduser("~")
        write = []
        for folder in folders:
            if folder.startswith("$"):  # a variable naming the folder, e.g. CODEX_HOME
                if value := env.get(folder[1:]) or os.environ.get(folder[1:]):
                    write.append(value)
                continue
            write.append(os.path.join(home, folder))
        return {"network": {"allow": allow}, "write": write}

    def to_json(self) -> dict[str, Any]:
        """The profile as shown by ``list_harnesses``: template, parser, env names (not values), availability."""
        path = self.resolve_executable()
        return {
            "name": self.name,
            "command": list(self.command),
            "parser": self.parser,
            "prompt_via": self.prompt_via,
            "env": sorted(self.env),
            "timeout_s": self.timeout_s,
            "cwd": self.cwd,
            "max_concurrency": self.max_concurrency,
            "description": self.description,
            "approvals": self.approvals is not None,
            "executable": self.executable,
            "available": path is not None,
            "path": path,
        }


def _host_port(url: str | None) -> str | None:
    """`HOST:PORT` of a base URL (the scheme's port when it names none), or None."""
    if not url:
        return None
    parts = urlsplit(url)
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}"


# Per built-in CLI: its model API's hosts, the variables that point it elsewhere, and its config folders
# (relative to HOME, or `$VARIABLE`), for its default sandbox.
_SANDBOXES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "claude": (("api.anthropic.com:443",), ("ANTHROPIC_BASE_URL",), (".claude", ".claude.json", "$CLAUDE_CONFIG_DIR")),
    "codex": (("api.openai.com:443", "chatgpt.com:443"), ("OPENAI_BASE_URL",), (".codex", "$CODEX_HOME")),
    "gemini": (("generativelanguage.googleapis.com:443",), ("GOOGLE_GEMINI_BASE_URL",), (".gemini",)),
    "pi": (
        ("api.anthropic.com:443", "api.openai.com:443"),
        ("ANTHROPIC_BASE_URL", "OPENAI_BASE_URL"),
        (".pi",),
    ),
    "opencode": (
        ("api.anthropic.com:443", "api.openai.com:443", "opencode.ai:443", "models.dev:443"),
        ("ANTHROPIC_BASE_URL", "OPENAI_BASE_URL"),
        (".local/share/opencode", ".config/opencode", ".cache/opencode", ".local/state/opencode"),
    ),
}

_NODE_NOTE = "writes each JSON event with its own write, so events arrive line by line over a pipe"

BUILTIN_PROFILES: dict[str, HarnessProfile] = {
    profile.name: profile
    for profile in (
        HarnessProfile(
            name="claude",
            command=("claude", "-p", PROMPT, "--output-format", "stream-json", "--verbose", ARGS),
            parser="claude",
            approvals="claude",
            description=f"Claude Code, print mode with stream-json. Node CLI; {_NODE_NOTE}. "
            "The run ends at its `result` line (the process may linger after it).",
        ),
        HarnessProfile(
            name="codex",
            command=("codex", "exec", "--json", "--skip-git-repo-check", ARGS, "--", PROMPT),
            parser="codex",
            description="OpenAI Codex, `exec --json`. Rust CLI; stdout is line-buffered even on a pipe, "
            "so each event arrives as it is printed.",
        ),
        HarnessProfile(
            name="gemini",
            command=("gemini", "-p", PROMPT, "-o", "stream-json", ARGS),
            parser="gemini",
            description=f"Gemini CLI, stream-json output. Node CLI; {_NODE_NOTE}. "
            "Answer text arrives as delta messages (the answer is the last turn's); the run ends at its "
            "`result` line. Headless, it offers no shell tool unless given e.g. `--approval-mode yolo`.",
        ),
        HarnessProfile(
            name="pi",
            command=("pi", "--mode", "json", "-p", ARGS, PROMPT),
            parser="pi",
            description=f"pi coding agent, JSON mode. Node CLI; {_NODE_NOTE}. "
            "Lines can be very large (whole messages are repeated); the run ends at `agent_end`.",
        ),
        HarnessProfile(
            name="opencode",
            command=("opencode", "run", "--format", "json", ARGS, PROMPT),
            parser="opencode",
            description="opencode, `run --format json`. Bun CLI; writes each JSON event with its own write, "
            "so events arrive line by line over a pipe. Needs stdin at /dev/null; the run ends at its last "
            "`step_finish` (reason other than `tool-calls`) or at `done`.",
        ),
    )
}
"""The profiles that exist without configuration, one per supported CLI."""


# --- configuration ------------------------------------------------------------------------------


def _error(name: str, key: str, problem: str) -> ValueError:
    return ValueError(f"harness profile {name!r}: {key} {problem}")


def _command(name: str, key: str, value: object) -> tuple[str, ...]:
    """The argv template from a list of strings or a shell-like string."""
    if isinstance(value, str):
        try:
            parts = shlex.split(value)
        except ValueError as exc:
            raise _error(name, key, f"cannot be split into words ({exc}); give a list of strings") from exc
    elif isinstance(value, list | tuple) and all(isinstance(part, str) for part in value):
        parts = list(value)
    else:
        raise _error(name, key, "must be a list of strings or a string")
    if not parts or not parts[0]:
        raise _error(name, key, "must start with the program to run")
    if any("\0" in part for part in parts):
        raise _error(name, key, "must not contain NUL characters")
    return tuple(parts)


def _env(name: str, key: str, value: object) -> dict[str, str]:
    """Environment variables from a table of strings."""
    if not isinstance(value, Mapping):
        raise _error(name, key, 'must be a table of strings (NAME = "value")')
    env: dict[str, str] = {}
    for var, item in value.items():
        if not isinstance(var, str) or not var or "=" in var or "\0" in var:
            raise _error(name, key, f"has an invalid variable name {var!r}: names are non-empty, without = or NUL")
        if not isinstance(item, str) or "\0" in item:
            raise _error(name, key, f"value of {var} must be a string without NUL")
        env[var] = item
    return env


def _duration(name: str, key: str, value: object) -> float:
    """A positive number of seconds, at most 7 days."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _error(name, key, "must be a number of seconds")
    if not 0 < value <= MAX_TIMEOUT_S:
        raise _error(name, key, f"must be more than 0 and at most {MAX_TIMEOUT_S:.0f} seconds (7 days)")
    return float(value)


def _positive_int(name: str, key: str, value: object) -> int:
    """An integer of at least 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _error(name, key, "must be an integer of at least 1")
    return value


def _directory(name: str, key: str, value: object) -> str:
    """A non-empty path (whether it exists is checked when a run starts)."""
    if not isinstance(value, str) or not value or "\0" in value:
        raise _error(name, key, "must be a non-empty directory path")
    return value


def _text(name: str, key: str, value: object) -> str:
    if not isinstance(value, str):
        raise _error(name, key, "must be a string")
    return value


def _parser_name(name: str, key: str, value: object) -> str:
    if not isinstance(value, str) or value not in PARSERS:
        raise _error(name, key, f"is {value!r}; allowed: {', '.join(sorted(PARSERS))}")
    return value


def _prompt_via(name: str, key: str, value: object) -> str:
    if value not in PROMPT_VIA:
        raise _error(name, key, f"is {value!r}; allowed: {', '.join(PROMPT_VIA)}")
    return value


def _resources(name: str, key: str, value: object) -> dict[str, float]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and k and isinstance(v, int | float) and not isinstance(v, bool) and v > 0
        for k, v in value.items()
    ):
        raise _error(name, key, "must be a table of resource names to positive amounts, e.g. {GPU = 1}")
    return {k: float(v) for k, v in value.items()}


def _approvals(name: str, key: str, value: object) -> str | None:
    if value not in APPROVAL_HOOKS:
        raise _error(
            name, key, f"must be one of {', '.join(map(repr, APPROVAL_HOOKS))}: the permission hook its CLI takes"
        )
    return str(value)


def _sandbox(name: str, key: str, value: object) -> dict[str, Any]:
    """A table; its shape is checked with dispatch_effect's `sandbox` model (`config.settings`)."""
    if not isinstance(value, Mapping):
        raise _error(
            name, key, 'must be a table: {network = "none" | "all" | {allow = [...]}, write = [...], hide = [...]}'
        )
    return dict(value)


_SETTINGS: dict[str, Callable[[str, str, object], object]] = {
    "command": _command,
    "parser": _parser_name,
    "env": _env,
    "timeout_s": _duration,
    "cwd": _directory,
    "prompt_via": _prompt_via,
    "max_concurrency": _positive_int,
    "description": _text,
    "resources": _resources,
    "sandbox": _sandbox,
    "approvals": _approvals,
}
"""Each key a ``[harness.NAME]`` table may hold, with the function that checks and converts its value."""


def _check_prompt_placement(profile: HarnessProfile) -> None:
    """The prompt goes in the argv (``{prompt}`` present) or on stdin (``{prompt}`` absent)."""
    has_prompt = any(PROMPT in part for part in profile.command)
    if profile.prompt_via == "arg" and not has_prompt:
        raise _error(profile.name, "command", f'has no {PROMPT} element; add one, or set prompt_via = "stdin"')
    if profile.prompt_via == "stdin" and has_prompt:
        raise _error(profile.name, "command", f'contains {PROMPT} but prompt_via is "stdin"; remove it')


def profile_from_config(name: str, table: Mapping[str, Any]) -> HarnessProfile:
    """The profile described by the TOML table ``[harness.NAME]``; ValueError naming the key when it is wrong.

    For a built-in name, keys left out keep the built-in profile's values; otherwise ``command`` is required
    and ``parser`` defaults to ``lines``.
    """
    allowed = ", ".join(_SETTINGS)
    if not isinstance(table, Mapping):
        raise ValueError(f"harness profile {name!r}: must be a table of settings; allowed keys: {allowed}")
    for key in table:
        if key not in _SETTINGS:
            raise ValueError(f"harness profile {name!r}: unknown key {key!r}; allowed keys: {allowed}")
    settings: dict[str, Any] = {key: _SETTINGS[key](name, key, value) for key, value in table.items()}
    base = BUILTIN_PROFILES.get(name)
    if base is None:
        if "command" not in settings:
            raise _error(name, "command", f"is required: the argv template, with {PROMPT} where the prompt goes")
        base = HarnessProfile(name=name, command=settings["command"], parser="lines")
    profile = replace(base, **settings)
    _check_prompt_placement(profile)
    return profile
