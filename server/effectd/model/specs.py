"""Turning a request into an `EffectSpec`: every check that needs the settings or the file system.

Type and range checks live in the tools' argument models; what is here needs to know the
allow-list, the harness profiles or the machine. Nothing here writes anything.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from effectd.config.settings import MAX_ARGV_BYTES, Settings, allowed_program
from effectd.errors import InvalidRequestError, NotAllowedError
from effectd.model.records import EffectSpec, SandboxSpec

MAX_ARG_BYTES = 128 * 1024  # MAX_ARG_STRLEN: the longest single argument execve accepts


def _no_nul(value: str, what: str) -> None:
    if "\0" in value:
        raise InvalidRequestError(f"{what} contains a NUL character, which no process can receive; remove it")


def check_env(env: Mapping[str, str]) -> dict[str, str]:
    for name, value in env.items():
        if not name or "=" in name or "\0" in name:
            raise InvalidRequestError(
                f"env name {name!r} is not allowed: a name must be non-empty and hold neither '=' nor NUL"
            )
        _no_nul(value, f"env value of {name}")
    return dict(env)


def check_cwd(cwd: str | None) -> str | None:
    if cwd is None:
        return None
    _no_nul(cwd, "cwd")
    path = os.path.abspath(os.path.expanduser(cwd))
    if not os.path.isdir(path):
        raise InvalidRequestError(f"cwd {cwd!r} is not a directory on the server's machine; give an existing directory")
    return path


def check_argv(argv: Sequence[str], what: str) -> None:
    """Refuses NUL in any element, an element over 128 KiB (Linux refuses to exec it) and an argv
    over 256 KiB in all."""
    size = 0
    for index, arg in enumerate(argv):
        _no_nul(arg, f"{what}[{index}]")
        length = len(arg.encode("utf-8", "surrogatepass")) + 1
        if length > MAX_ARG_BYTES:
            raise InvalidRequestError(
                f"{what}[{index}] is {length} bytes; one argument may hold at most {MAX_ARG_BYTES} bytes "
                "(128 KiB, the kernel's limit): pass large input through `stdin` or a file instead"
            )
        size += length
    if size > MAX_ARGV_BYTES:
        raise InvalidRequestError(
            f"{what} is {size} bytes in all; at most {MAX_ARGV_BYTES} bytes (256 KiB) are allowed: "
            "pass large input through `stdin` or a file instead"
        )


def _isolation(request: Mapping[str, Any], fields: dict[str, Any]) -> None:
    """The isolation arguments; the git checks (a work tree, a base that resolves) come after, in
    `supervisor.workspaces.check`, since they run git."""
    isolation = request.get("isolation") or "none"
    if isolation == "none":
        for name in ("worktree_base", "keep_worktree"):
            if request.get(name) not in (None, False):
                raise InvalidRequestError(f'`{name}` goes with isolation "worktree"; this effect has isolation "none"')
        return
    base = request.get("worktree_base")
    if base is not None:
        _no_nul(base, "worktree_base")
        if base.startswith("-") or not base.strip():
            raise InvalidRequestError(f"worktree_base {base!r} is not a git ref; give a branch, tag or commit id")
    fields.update(isolation=isolation, worktree_base=base, keep_worktree=bool(request.get("keep_worktree")))
    fields.setdefault("cwd", os.getcwd())  # the worktree mirrors a repository: which one is fixed now


def check_resources(settings: Settings, resources: Mapping[str, float]) -> dict[str, float] | None:
    """The Ray resources an effect needs: names with positive amounts; only `CPU` on the local runner."""
    for name, amount in resources.items():
        if not name or "\0" in name or not math.isfinite(amount) or amount <= 0:
            raise InvalidRequestError(
                f"`resources` maps resource names to positive amounts, e.g. {{'GPU': 1}}; not {name!r}: {amount!r}"
            )
    other = sorted(set(resources) - {"CPU"})
    if other and settings.runner != "ray":
        raise InvalidRequestError(
            f"resources {', '.join(map(repr, other))} need the Ray runner (`effectd serve --runner ray`); "
            "the local runner takes only `CPU`"
        )
    return {name: float(amount) for name, amount in resources.items()} or None


def check_sandbox(settings: Settings, sandbox: Mapping[str, Any], cwd: str | None, isolated: bool) -> SandboxSpec:
    """A sandbox table (its shape already checked) as applied: ports in range, paths absolute; only on the
    local runner; and a `cwd` the sandbox can show (not the journal's folder itself, which it hides)."""
    if settings.runner != "local":
        raise InvalidRequestError(
            f"`sandbox` needs the local runner (bubblewrap on this machine); this server runs effects on "
            f"{settings.runner!r}: dispatch without `sandbox`, or to a server started with `--runner local`"
        )
    network = sandbox.get("network", "none")
    if isinstance(network, Mapping):
        allow = list(dict.fromkeys(network.get("allow") or []))
        for entry in allow:
            port = int(entry.rpartition(":")[2])
            if not 1 <= port <= 65535:
                raise InvalidRequestError(
                    f"sandbox.network.allow: {entry!r} has no port from 1 to 65535; give HOST:PORT"
                )
        network = {"allow": allow}
    paths: dict[str, list[str]] = {}
    for name in ("write", "hide"):
        paths[name] = []
        for path in sandbox.get(name) or []:
            _no_nul(path, f"sandbox.{name}")
            full = os.path.expanduser(path)
            if not os.path.isabs(full):
                raise InvalidRequestError(f"sandbox.{name}: {path!r} is not an absolute path; give /... or ~/...")
            paths[name].append(os.path.normpath(full))
    if not isolated:
        where = os.path.realpath(cwd or os.getcwd())
        for hidden in (settings.db.parent, settings.output_dir):
            folder = os.path.realpath(hidden)
            if where == folder:  # a folder inside it, or around it, is fine: the deeper mount wins
                raise InvalidRequestError(
                    f"the effect's cwd {where!r} is the journal's folder, which a sandbox hides; give another "
                    "`cwd` (or put the journal in a folder of its own with --db)"
                )
    return SandboxSpec(network=network, write=paths["write"], hide=paths["hide"])


APPROVAL_TIMEOUT_S = 600.0


def _approvals(settings: Settings, request: Mapping[str, Any], fields: dict[str, Any], hook: str | None) -> None:
    """`approvals: "ask"` (issue 25): only for a harness whose CLI has a permission hook, on this machine;
    a flow step's `approval: true` (its start gate, which effectd itself asks) for any step."""
    ask, start = request.get("approvals") == "ask", bool(request.get("approval"))
    if not ask and not start:
        given = [name for name in ("approval_rules", "approval_timeout_s") if request.get(name) is not None]
        if given:
            raise InvalidRequestError(
                f'`{given[0]}` goes with `approvals: "ask"` (or a flow step\'s `approval: true`), which this '
                "dispatch does not set"
            )
        return
    if ask:
        _check_gate(settings, fields, hook)
        fields["approvals"] = "ask"
    if start:
        fields["start_approval"] = True
    rules = request.get("approval_rules") or []
    fields["approval_rules"] = [
        {name: value for name, value in dict(rule).items() if value is not None}
        for rule in (rule.model_dump() if hasattr(rule, "model_dump") else rule for rule in rules)
    ]
    timeout = request.get("approval_timeout_s")
    fields["approval_timeout_s"] = float(APPROVAL_TIMEOUT_S if timeout is None else timeout)


def _check_gate(settings: Settings, fields: Mapping[str, Any], hook: str | None) -> None:
    """Whether this effect's sub-agent can be given a permission gate; InvalidRequestError says why not."""
    supported = sorted(name for name, profile in settings.harnesses.items() if profile.approvals is not None)
    if fields.get("kind") != "harness":
        raise InvalidRequestError(
            '`approvals: "ask"` is for a harness sub-agent (a command asks nobody); profiles that support it: '
            + (", ".join(supported) or "none")
        )
    if hook is None:
        raise InvalidRequestError(
            f'harness {fields["harness"]!r} has no permission hook effectd can use, so `approvals: "ask"` cannot '
            f"work there; profiles that support it: {', '.join(supported) or 'none'}"
        )
    if settings.runner != "local":
        raise InvalidRequestError(
            f'`approvals: "ask"` needs the local runner (the sub-agent reaches effectd through a local socket); '
            f"this server runs effects on {settings.runner!r}"
        )
    if fields.get("sandbox") is not None:
        raise InvalidRequestError(
            '`approvals: "ask"` and `sandbox` together are not supported yet (the sandbox hides the socket the '
            "sub-agent asks through): dispatch with one of them"
        )


def _sandbox(settings: Settings, request: Mapping[str, Any], fields: dict[str, Any], default: Any) -> None:
    """`sandbox`: the dispatch's, else the server's `[sandbox] default`; `true` is the harness profile's
    default sandbox (`default`, network to its model only) or, for a command, network "none"."""
    asked = request.get("sandbox")
    if asked is None:
        asked = settings.sandbox.default
        if not isinstance(asked, bool):
            asked = asked.model_dump()
    if asked is False:
        return
    table = default if asked is True else asked
    fields["sandbox"] = check_sandbox(settings, table, fields.get("cwd"), request.get("isolation") == "worktree")


LIMIT_ORDER = ("memory_mb", "pids", "cpu")
MIN_CPU = 0.001  # the kernel's smallest CFS quota (1 ms) over its longest period (1 s)


def resolve_limits(defaults: Mapping[str, float], limits: Mapping[str, Any] | None) -> dict[str, int | float] | None:
    """The effect's limits: each one the request sets, else the config's `[limits]` default. The model
    checked types and ranges; what is left is what the kernel itself cannot take."""
    given = {name: value for name, value in (limits or {}).items() if value is not None}
    merged = {**defaults, **given}
    cpu = merged.get("cpu")
    if cpu is not None and cpu < MIN_CPU:
        raise InvalidRequestError(
            f"limits.cpu {cpu!r} is below {MIN_CPU} of a core, the smallest share the kernel's CPU quota can give"
        )
    resolved = {name: merged[name] for name in LIMIT_ORDER if name in merged}
    return {name: float(v) if name == "cpu" else int(v) for name, v in resolved.items()} or None


def build_spec(settings: Settings, request: Mapping[str, Any]) -> EffectSpec:
    """Validates one effect request (the arguments of dispatch_effect or of a flow step) into a spec.

    Raises InvalidRequestError (or NotAllowedError) saying what is wrong and what is allowed.
    """
    command = request.get("command")
    harness = request.get("harness")
    prompt = request.get("prompt")
    args = list(request.get("args") or [])
    if (command is None) == (harness is None):
        raise InvalidRequestError(
            "give exactly one of `command` (an argv list) or `harness` (a profile name, with `prompt`); "
            f"{'both were' if command is not None else 'neither was'} given"
        )
    fields: dict[str, Any] = {}
    hook: str | None = None  # the permission hook of the harness's CLI, for `approvals: "ask"`
    if command is not None:
        if prompt is not None or args:
            raise InvalidRequestError("`prompt` and `args` go with `harness`; a `command` effect takes neither")
        if not command:
            raise InvalidRequestError("`command` is empty: give the program and its arguments, e.g. ['make', 'test']")
        check_argv(command, "command")
        env = check_env(request.get("env") or {})
        sandbox_default: dict[str, Any] = {"network": "none"}
        command = list(command)
        if not settings.allow_any_command:
            program = allowed_program(
                command[0], settings.allow_commands, path=env.get("PATH"), cwd=check_cwd(request.get("cwd"))
            )
            if program is None:
                raise NotAllowedError(
                    f"command {command[0]!r} is not allowed on this server. Allow it with `--allow-command "
                    f"{command[0]}` (repeatable) or `--allow-any-command` on `effectd serve`, or list it under "
                    "[commands] allow in effectd.toml. Harness profiles run without this."
                )
            command[0] = program  # run exactly the file that was checked
        fields.update(kind="command", command=command)
    else:
        profile = settings.harnesses.get(str(harness))
        if profile is None:
            raise InvalidRequestError(
                f"unknown harness {harness!r}; configured profiles: {', '.join(sorted(settings.harnesses))}"
            )
        if prompt is None:
            raise InvalidRequestError(f"harness {harness!r} needs a `prompt`")
        _no_nul(prompt, "prompt")
        for index, arg in enumerate(args):
            _no_nul(arg, f"args[{index}]")
        if profile.resolve_executable() is None:
            raise NotAllowedError(
                f"harness {harness!r} cannot run: its executable {profile.executable!r} is not on the server's PATH "
                "(install it, or point the profile's command at it in effectd.toml)"
            )
        argv = profile.build_argv(prompt, args)
        check_argv(argv, f"the {harness} command line")
        env = {**profile.env, **check_env(request.get("env") or {})}
        sandbox_default = profile.default_sandbox(env)
        hook = profile.approvals
        fields.update(
            kind="harness",
            command=argv,
            harness=harness,
            prompt=prompt,
            args=args,
            parser=profile.parser,
            prompt_via=profile.prompt_via,
        )
        if request.get("timeout_s") is None and profile.timeout_s is not None:
            fields["timeout_s"] = profile.timeout_s
        if request.get("cwd") is None and profile.cwd is not None:
            fields["cwd"] = check_cwd(profile.cwd)
        if request.get("resources") is None and profile.resources is not None:
            fields["resources"] = check_resources(settings, profile.resources)
    for name in ("group", "label", "key", "stdin"):
        value = request.get(name)
        if value is not None and name != "stdin":
            _no_nul(value, name)
        if value is not None:
            fields[name] = value
    for name in ("timeout_s", "idle_timeout_s"):
        if request.get(name) is not None:
            fields[name] = float(request[name])
    grace = request.get("grace_s")
    fields["grace_s"] = float(settings.default_grace_s if grace is None else grace)
    if request.get("cwd") is not None:
        fields["cwd"] = check_cwd(request["cwd"])
    if request.get("resources") is not None:
        fields["resources"] = check_resources(settings, request["resources"])
    fields["env"] = env
    # --- limits (issue 23): the request's over the config's [limits]; the runner says at dispatch whether it can
    if (limits := resolve_limits(settings.limits, request.get("limits"))) is not None:
        fields["limits"] = limits
    _isolation(request, fields)
    _sandbox(settings, request, fields, sandbox_default)
    _approvals(settings, request, fields, hook)
    fields["depends_on"] = list(dict.fromkeys(request.get("depends_on") or []))
    if request.get("group_max_concurrency") is not None:
        if request.get("group") is None:
            raise InvalidRequestError("`group_max_concurrency` caps a group: give `group` too")
        fields["group_max_concurrency"] = request["group_max_concurrency"]
    for name in ("max_attempts", "retry_backoff_s", "flow_id", "step_id", "templated"):
        if request.get(name) is not None:
            fields[name] = request[name]
    return EffectSpec(**fields)
