"""Settings: defaults, then the TOML file, then command-line flags, into one object."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from effectd.config.file import MAX_RESULT_LIMIT_BYTES, RUNNERS, ConfigFile, RunnerName, SandboxTable, parse_config
from effectd.config.http import HttpSettings
from effectd.config.locate import config_path
from effectd.errors import ConfigError
from effectd.harness.profiles import BUILTIN_PROFILES, HarnessProfile, profile_from_config
from effectd.model.arguments import SandboxArguments

MAX_ARGV_BYTES = 256 * 1024
RAY_MISSING = (
    "the Ray runner needs Ray, which is not installed here: pip install 'effectd[ray]' "
    "(or pip install 'ray>=2.9' into effectd's environment)"
)


@dataclass(frozen=True)
class Settings:
    """Everything the engine needs to know about its environment, resolved once at start."""

    db: Path = Path(".effectd/journal.db")
    max_concurrency: int = 16
    default_grace_s: float = 5.0
    output_limit_bytes: int = 64 * 1024 * 1024
    stall_after_s: float = 60.0
    result_grace_s: float = 2.0
    result_limit_bytes: int = 1024 * 1024  # a larger result file is not read (`result_error` says so)
    allow_commands: tuple[str, ...] = ()
    allow_any_command: bool = False
    keep_queued: bool = False
    harnesses: Mapping[str, HarnessProfile] = field(default_factory=lambda: dict(BUILTIN_PROFILES))
    poll_control_s: float = 0.2
    peer_check_s: float = 1.0  # how often a live server looks for servers on its journal that died
    peer_answer_s: float = 10.0  # how long another server has to answer a cancel forwarded to it
    http: HttpSettings = field(default_factory=HttpSettings)
    journal_busy_timeout_s: float = 10.0  # a lock held elsewhere longer than this is a journal fault
    journal_retry_max_s: float = 2.0  # the longest wait between attempts at a refused commit
    runner: RunnerName = "local"
    ray_address: str | None = None  # the Ray cluster; None: $RAY_ADDRESS, else a local Ray started with the server
    sandbox: SandboxTable = field(default_factory=SandboxTable)  # `[sandbox]`: the default sandbox, the bwrap
    limits: Mapping[str, float] = field(default_factory=dict)  # `[limits]`: each effect's default limits

    @property
    def output_dir(self) -> Path:
        """Beside the journal file itself (symlinks resolved): every server on one journal shares it."""
        real = self.db.resolve()
        return real.parent / f"{real.stem}.output"

    @property
    def worktree_dir(self) -> Path:
        """Where isolated effects' git worktrees live, one directory per effect."""
        return self.db.parent / f"{self.db.stem}.worktrees"


def resolve_program(argv0: str, path: str | None = None, cwd: str | None = None) -> str | None:
    """The file exec would run for `argv0`: a path (relative to `cwd`), or a name looked up in `path`
    (default: the server's PATH). None when there is no such executable file."""
    if "/" in argv0:
        candidate = os.path.join(cwd or os.getcwd(), argv0)
        return os.path.abspath(candidate) if os.access(candidate, os.X_OK) and not os.path.isdir(candidate) else None
    found = shutil.which(argv0, path=path)
    return os.path.abspath(found) if found else None


def allowed_program(
    argv0: str, allowed: Sequence[str], *, path: str | None = None, cwd: str | None = None
) -> str | None:
    """What to run for `argv0` if it is one of the allowed programs, else None.

    The program is resolved the way the effect's own exec would resolve it (its PATH and cwd) and
    compared, as a file, with what the allowed names resolve to for the server: an effect cannot
    reach another `make` by bringing its own PATH. A listed name that resolves to nothing is let
    through as it is (its spawn then fails, and the effect with it).
    """
    resolved = resolve_program(argv0, path, cwd)
    if resolved is None:
        return argv0 if argv0 in allowed else None
    real = os.path.realpath(resolved)
    for program in allowed:
        target = resolve_program(program)
        if target is not None and (target == resolved or os.path.realpath(target) == real):
            return resolved
    return None


def load_file(path: Path | None) -> ConfigFile:
    """The TOML configuration, checked: `path`, else $EFFECTD_CONFIG, else ./effectd.toml if present, else empty."""
    path = config_path(path)
    if path is None:
        return ConfigFile()
    try:
        with open(path, "rb") as file:
            table = tomllib.load(file)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    return parse_config(table, str(path))


def _runner(file: ConfigFile, flag: str | None, address: str | None) -> dict[str, Any]:
    """The runner: the --runner flag, else config `runner`, else $EFFECTD_RUNNER, else local; and for Ray
    its address: --ray-address, else config `ray_address`, else $RAY_ADDRESS, else None (start one)."""
    runner = flag or file.runner or os.environ.get("EFFECTD_RUNNER") or "local"
    if runner not in RUNNERS:
        raise ConfigError(f"runner must be one of {', '.join(RUNNERS)}, not {runner!r}")
    if runner == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError(RAY_MISSING)
    return {"runner": runner, "ray_address": address or file.ray_address or os.environ.get("RAY_ADDRESS") or None}


def build_settings(
    file: ConfigFile | Mapping[str, Any],
    *,
    db: str | Path | None = None,
    max_concurrency: int | None = None,
    allow_commands: Sequence[str] = (),
    allow_any_command: bool = False,
    keep_queued: bool = False,
    result_limit_bytes: int | None = None,
    runner: str | None = None,
    ray_address: str | None = None,
) -> Settings:
    """Settings from the file (`load_file`'s, or a table checked here), then the environment
    ($EFFECTD_DB, $EFFECTD_RESULT_LIMIT_BYTES), then the command-line flags laid over it."""
    config = file if isinstance(file, ConfigFile) else parse_config(file)
    limits = (
        "max_concurrency",
        "default_grace_s",
        "output_limit_bytes",
        "stall_after_s",
        "result_grace_s",
        "peer_check_s",
        "peer_answer_s",
    )
    values: dict[str, Any] = {k: v for k in (*limits, "result_limit_bytes") if (v := getattr(config, k)) is not None}
    harnesses = dict(BUILTIN_PROFILES)
    for name, table in config.harness.items():
        try:
            harnesses[name] = profile_from_config(name, table)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        _check_profile_sandbox(name, harnesses[name].sandbox)
    path = Path(db) if db is not None else None
    path = path or (Path(os.environ["EFFECTD_DB"]) if os.environ.get("EFFECTD_DB") else None)
    if path is None and config.db is not None:
        path = Path(config.db)
    values.update(_result_limit(result_limit_bytes))
    if max_concurrency is not None:
        if max_concurrency < 1:
            raise ConfigError(f"--max-concurrency must be at least 1, not {max_concurrency}")
        values["max_concurrency"] = max_concurrency
    values.update(_runner(config, runner, ray_address))
    return Settings(
        db=(path or Path(".effectd/journal.db")).expanduser().absolute(),
        allow_commands=(*config.commands.allow, *allow_commands),
        allow_any_command=allow_any_command or config.commands.allow_any,
        keep_queued=keep_queued,
        harnesses=harnesses,
        http=config.http,
        sandbox=config.sandbox,
        limits=config.limits.given(),
        **values,
    )


def _check_profile_sandbox(name: str, sandbox: Mapping[str, Any] | None) -> None:
    """A `[harness.NAME] sandbox` table has the shape of dispatch_effect's `sandbox` object."""
    if sandbox is None:
        return
    try:
        SandboxArguments.model_validate(sandbox)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"] if not str(part).startswith(("NetworkAllow", "literal")))
        raise ConfigError(
            f"harness profile {name!r}: sandbox{'.' + where if where else ''}: {problem['msg']}; a sandbox table takes "
            '{network = "none" | "all" | {allow = ["HOST:PORT", ...]}, write = [paths], hide = [paths]}'
        ) from None


def _result_limit(flag: int | None) -> dict[str, int]:
    """`result_limit_bytes` from --result-limit-bytes, else $EFFECTD_RESULT_LIMIT_BYTES (else the file's)."""
    if flag is not None:
        source, value = "--result-limit-bytes", str(flag)
    elif os.environ.get("EFFECTD_RESULT_LIMIT_BYTES"):
        source, value = "$EFFECTD_RESULT_LIMIT_BYTES", os.environ["EFFECTD_RESULT_LIMIT_BYTES"]
    else:
        return {}
    try:
        number = int(value)
    except ValueError:
        number = -1
    if not 0 <= number <= MAX_RESULT_LIMIT_BYTES:
        raise ConfigError(f"{source} must be a number of bytes between 0 and {MAX_RESULT_LIMIT_BYTES}, not {value!r}")
    return {"result_limit_bytes": number}
