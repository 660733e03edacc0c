"""Sandboxes: an effect's command run inside bubblewrap (`bwrap`), built here as an argv around it.

In the sandbox the whole filesystem is read-only (`--ro-bind / /`, a `/dev` and a `/proc` of its own),
except the effect's cwd, its `write` paths and a private `/tmp` (its TMPDIR, a fresh folder per effect,
removed after). The journal's folder, the output folder, the token file, the worktrees' folder (the
effect's own worktree is bound back in) and the `hide` paths are covered: a folder by an empty read-only
tmpfs, a file by an empty read-only file. The folder of the result file is the effect's own: only its result is there.
Mounts are laid from the shortest path to the longest, so a path inside a hidden folder (the effect's own
worktree) can be writable, and a hidden folder inside a writable one (a journal under the cwd) stays hidden.

Its network: `none` (`--unshare-net`: a loopback of its own), `all` (the host's), or an allow-list:
no network of its own but a relay (`effectd.runner.relay`, started inside before the command) that
listens on the sandbox's loopback and forwards each connection to a unix socket where effectd's proxy
(`effectd.runner.proxy`) lets through only the allowed HOST:PORT.

It sees no process outside (`--unshare-pid`), cannot leave its cgroup (`--unshare-cgroup`: the cgroup
namespace is rooted at the effect's cgroup, which the runner moved it into before bwrap ran; and
/sys/fs/cgroup is read-only), keeps no capability (`--cap-drop ALL`: even when effectd runs as root),
dies with the runner (`--die-with-parent`) and has no terminal (`--new-session`).

Cancels: bwrap does not forward signals and dies of a SIGTERM, and `--die-with-parent` then SIGKILLs the
command at once, which would take away its grace. So bwrap runs with SIGTERM ignored
(`env --ignore-signal=TERM`) and the command with it set back to the default (`env --default-signal=TERM`,
or the relay): the SIGTERM the runner sends every process of the cgroup reaches the command as without
a sandbox, and bwrap exits when the command does, with its exit code (128 + N for a command killed by
signal N: bwrap's own convention).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

RELAY = str(Path(__file__).with_name("relay.py"))
ENV = shutil.which("env") or "/usr/bin/env"  # coreutils env: sets signal dispositions, then execs
PROBE_TIMEOUT_S = 10.0

_INSTALL = (
    "install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`; Fedora/RHEL: `dnf install bubblewrap`; "
    "Arch: `pacman -S bubblewrap`), or point `[sandbox] bwrap` in effectd.toml at it"
)


@dataclass(frozen=True)
class Sandbox:
    """What the runner needs to sandbox one effect: its network, what it may write (its cwd first), and
    what it must not see (the `hide` paths and the server's own: journal folder, token file, worktrees)."""

    network: str = "none"  # "none", "all" or "allow"
    allow: tuple[str, ...] = ()  # with "allow": the HOST:PORT the proxy lets through
    write: tuple[str, ...] = ()
    hide: tuple[str, ...] = ()


@dataclass
class Prepared:
    """A sandboxed launch made ready: its argv and environment, where its result file is on the host,
    and the private folder to remove when the effect is over."""

    argv: list[str]
    env: dict[str, str]
    result_file: str | None
    folder: Path
    proxy_socket: str | None = None
    closed: bool = field(default=False)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            shutil.rmtree(self.folder, ignore_errors=True)


class Sandboxes:
    """Makes sandboxed launches with one bubblewrap program; probes once whether it works here."""

    def __init__(self, bwrap: str = "bwrap") -> None:
        self._bwrap = bwrap
        self._lock = threading.Lock()
        self._problem: str | None = None
        self._probed = False
        self._base: Path | None = None  # the folder every effect's private folder is made in (hidden in each)

    def problem(self) -> str | None:
        """Why this host cannot make a sandbox (with what to install or enable), or None when it can. The
        first call runs bwrap once (a few milliseconds); the answer is kept."""
        with self._lock:
            if not self._probed:
                self._problem = _probe(self._bwrap)
                self._probed = True
            return self._problem

    def prepare(
        self,
        sandbox: Sandbox,
        argv: Sequence[str],
        env: dict[str, str],
        cwd: str | None,
        result_file: str | None,
        effect_id: str | None,
    ) -> Prepared:
        """Makes the effect's private folder and returns its launch. Raises OSError when the folder cannot
        be made, RuntimeError when no sandbox can be made here."""
        if (problem := self.problem()) is not None:
            raise RuntimeError(problem)
        bwrap = shutil.which(self._bwrap)
        assert bwrap is not None  # the probe found it
        with self._lock:
            if self._base is None or not self._base.is_dir():
                self._base = Path(tempfile.mkdtemp(prefix="effectd-sandboxes-"))
            base = self._base
        folder = Path(tempfile.mkdtemp(prefix=f"{effect_id or 'effect'}-", dir=base))
        try:
            tmp, results = folder / "tmp", folder / "result"
            tmp.mkdir()
            results.mkdir()
            empty = folder / "empty"  # what a hidden file shows: an empty read-only file
            empty.touch(mode=0o444)
            host_result = str(results / os.path.basename(result_file)) if result_file is not None else None
            env = {name: value for name, value in env.items() if name.lower() != "no_proxy"}
            env.update(TMPDIR="/tmp")
            mounts: list[tuple[str, int, list[str]]] = [("/tmp", 0, ["--bind", str(tmp), "/tmp"])]
            workdir = os.path.abspath(cwd or os.getcwd())
            for path in dict.fromkeys([workdir, *sandbox.write]):
                if os.path.exists(path):  # nothing to bind where nothing is
                    mounts.append((path, 0, ["--bind", path, path]))
            hidden = [*sandbox.hide, str(base)]
            if result_file is not None:
                result_dir = os.path.dirname(os.path.abspath(result_file))
                mounts.append((result_dir, 2, ["--bind", str(results), result_dir]))
                hidden = [path for path in hidden if os.path.normpath(path) != result_dir]
            remount = []
            for path in dict.fromkeys(os.path.normpath(p) for p in hidden):
                if os.path.isdir(path):
                    mounts.append((path, 1, ["--tmpfs", path]))
                    remount += ["--remount-ro", path]
                elif os.path.lexists(path):
                    mounts.append((path, 1, ["--ro-bind", str(empty), path]))
            mounts.sort(key=lambda mount: (_depth(mount[0]), mount[1]))
            inner = [ENV, "--default-signal=TERM", "--"]
            socket_path = None
            if sandbox.network == "allow":
                socket_path = str(tmp / ".effectd-proxy.sock")  # inside: /tmp/.effectd-proxy.sock
                inner = [sys.executable, "-I", "-S", RELAY, "/tmp/.effectd-proxy.sock", "--"]
            wrapped = [
                ENV, "--ignore-signal=TERM", bwrap,
                "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                *(arg for mount in mounts for arg in mount[2]),
                *remount,
                *_ISOLATION,
                *(["--unshare-net"] if sandbox.network != "all" else []),
                "--chdir", workdir,
                "--", *inner, *argv,
            ]  # fmt: skip
            return Prepared(wrapped, env, host_result, folder, socket_path)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise


_ISOLATION = ["--unshare-pid", "--unshare-cgroup", "--cap-drop", "ALL", "--die-with-parent", "--new-session"]


def _depth(path: str) -> int:
    return len(Path(path).parts)


def _probe(bwrap: str) -> str | None:
    """Runs `true` in a sandbox made as every effect's is; None when it works, else what to do."""
    found = shutil.which(bwrap)
    if found is None:
        return (
            f"this server cannot make a sandbox: bubblewrap ({bwrap!r}) is not on its PATH; {_INSTALL}. Nothing was run"
        )
    argv = [ENV, "--ignore-signal=TERM", found, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    argv += [*_ISOLATION, "--unshare-net", "--", ENV, "--default-signal=TERM", "--", "true"]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"this server cannot make a sandbox: {found} did not run ({exc}); {_INSTALL}. Nothing was run"
    if done.returncode == 0:
        return None
    said = done.stderr.decode("utf-8", "replace").strip()[-500:]
    return (
        f"this server cannot make a sandbox: {found} failed ({said or f'exit code {done.returncode}'}). "
        "bubblewrap needs unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1; on Ubuntu "
        "24.04 and later also kernel.apparmor_restrict_unprivileged_userns=0, or an AppArmor profile for bwrap), "
        "and coreutils 8.31 or later for `env --ignore-signal`. Nothing was run"
    )
