"""`effectd doctor`: what this host supports, in a few lines a person reads before trusting it with agents.

It looks and changes nothing a server would not (it makes no effect cgroup, and does not move itself
into a leaf as a server on a cgroup v2 host does): each limit and the cgroup that would enforce it, the
sandbox helper, the keeper, cgroup containment, git, and where the journal is. It always exits 0: a missing
piece is information, not an error.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

from effectd.config.settings import Settings, build_settings, load_file
from effectd.runner.cgroups import Cgroups
from effectd.runner.controllers import LIMIT_CONTROLLERS, Controllers
from effectd.runner.keeper import Keeper
from effectd.runner.sandbox import Sandboxes

PROBE_TIMEOUT_S = 10.0


def cmd_doctor(args: argparse.Namespace) -> int:
    settings = build_settings(
        load_file(Path(args.config) if args.config else None), db=Path(args.db) if args.db else None
    )
    print("effectd doctor: what this host supports\n")
    for name, value in report(settings):
        print(f"{name:<13} {value}" if name else f"{'':<13} {value}")
    return 0


def report(settings: Settings) -> list[tuple[str, str]]:
    """The lines of the report: a topic (blank for a continuation) and what was found."""
    cgroups = Cgroups.find()
    controllers = Controllers.find(cgroups.root if cgroups is not None else None, prepare=False)
    lines: list[tuple[str, str]] = [
        ("limits", "(`limits` on dispatch_effect and flow steps, `[limits]` in the config)")
    ]
    for limit in LIMIT_CONTROLLERS:
        place = controllers.places.get(limit)
        found = f"yes, {place.describe()}" if place is not None else f"no: {controllers.missing[limit]}"
        lines.append(("", f"{limit:<10} {found}"))
    if settings.runner != "local":
        lines.append(("", f"(the {settings.runner} runner refuses every limit)"))
    if settings.limits:
        lines.append(("", "defaults: " + ", ".join(f"{k} = {v}" for k, v in settings.limits.items())))
    lines.append(("sandbox", _sandbox(settings.sandbox.bwrap)))
    lines.append(("keeper", _keeper()))
    if cgroups is not None:
        lines.append(("containment", f"cgroup v2, a cgroup per effect under {cgroups.root} (cgroup.kill)"))
    else:
        lines.append(
            ("containment", "no writable cgroup v2: the subreaper and the environment marker (EFFECTD_EFFECT_ID)")
        )
    lines.append(("git", _git()))
    state = "exists" if settings.db.exists() else "not created yet"
    lines.append(("journal", f"{settings.db} ({state})"))
    lines.append(("", f"output in {settings.output_dir}"))
    lines.append(("runner", settings.runner + (f" ({settings.ray_address})" if settings.ray_address else "")))
    return lines


def _run(argv: list[str]) -> subprocess.CompletedProcess[str] | str:
    """The finished probe, or why it did not finish."""
    try:
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)


def _sandbox(bwrap: str) -> str:
    """Whether bubblewrap makes a sandbox here, probed exactly as the server probes before its first
    sandboxed effect (the same argv, the same message), and whether user namespaces are on."""
    userns = _read("/proc/sys/user/max_user_namespaces")
    namespaces = f"user namespaces: {'up to ' + userns if userns not in (None, '0') else 'off'}"
    problem = Sandboxes(bwrap).problem()
    if problem is not None:
        said = problem.removeprefix("this server cannot make a sandbox: ").removesuffix(". Nothing was run")
        return f"no: {said}; {namespaces}"
    return f"yes, {shutil.which(bwrap)} (a sandbox made as every effect's ran `true`); {namespaces}"


def _keeper() -> str:
    """Starts a keeper, as a server does at its first effect, and checks it exits when its pipe closes."""
    keeper = Keeper()
    problem = keeper.probe(within_s=PROBE_TIMEOUT_S)
    if problem is not None:
        return f"no: {problem}; effects' descendants would outlive a killed server until its next start"
    return "yes (a keeper started in a session of its own and exited when its pipe closed)"


def _git() -> str:
    git = shutil.which("git")
    if git is None:
        return 'no: git is not on PATH (isolation "worktree" needs it)'
    probe = _run([git, "--version"])
    if isinstance(probe, str) or probe.returncode != 0:
        return f"no: {git} --version failed"
    return f"{probe.stdout.strip()} ({git})"


def _read(path: str) -> str | None:
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError:
        return None
