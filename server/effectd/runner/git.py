"""Git worktrees for isolated effects: made before the process starts, finished when it ends.

Every git command runs as a subprocess here, in the runner package (nothing above the runner starts a
process). Commands that touch one repository are serialized: one lock per repository in this server
(keyed by its shared git directory) and, around it, a `flock` on `<git-common-dir>/effectd.lock`, so
two servers on one repository do not race either. Each command is bounded and shielded: a shutdown
never leaves a worktree half made or a commit half written. Hooks never run (`core.hooksPath` points
at an empty place), and git never asks anything (no terminal prompt, no editor).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

log = logging.getLogger("effectd")

GIT_TIMEOUT_S = 120.0
MAX_CHANGED_FILES = 1000
FALLBACK_NAME, FALLBACK_EMAIL = "effectd", "effectd@localhost"
_LOCK_POLL_S = 0.02
# Never inherited from the server: they would point every command at another repository or index.
_DROPPED_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR", "GIT_PREFIX", "GIT_OBJECT_DIRECTORY")
_QUIET = (
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "gc.auto=0",
    "-c",
    "maintenance.auto=false",
    "-c",
    "core.quotepath=false",
)


class GitError(Exception):
    """Raised when a git command fails; the message carries git's own words."""


def branch_of(effect_id: str) -> str:
    """The branch an isolated effect works on."""
    return f"effectd/{effect_id}"


@dataclass(frozen=True)
class Repository:
    """Where a directory sits in git: its work tree's top, the shared git directory, its prefix."""

    toplevel: str
    common_dir: str
    prefix: str  # the directory relative to `toplevel`, "" at the top


def real_path(path: str | Path) -> str:
    """The path with symbolic links resolved, as git writes worktree paths."""
    return os.path.realpath(path)


def is_dir(path: str | Path) -> bool:
    return os.path.isdir(path)


def _env() -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in _DROPPED_ENV}
    env.update(GIT_TERMINAL_PROMPT="0", GIT_EDITOR="true", GIT_PAGER="cat", LC_ALL="C")
    return env


async def git(args: Sequence[str], cwd: str, *, ok: Sequence[int] = (0,)) -> tuple[int, str]:
    """Runs `git args` in `cwd`; returns its exit code (one of `ok`) and stdout. GitError otherwise."""
    with anyio.fail_after(GIT_TIMEOUT_S, shield=True):
        try:
            done = await anyio.run_process(["git", *_QUIET, *args], cwd=cwd, env=_env(), check=False)
        except OSError as exc:
            raise GitError(f"git could not run in {cwd!r}: {exc}") from exc
    if done.returncode not in ok:
        said = done.stderr.decode("utf-8", "replace").strip() or done.stdout.decode("utf-8", "replace").strip()
        raise GitError(f"git {' '.join(args[:2])} failed (exit {done.returncode}): {said}")
    return done.returncode, done.stdout.decode("utf-8", "surrogateescape")


async def locate(cwd: str) -> Repository:
    """The git work tree that holds `cwd`; GitError when `cwd` is not inside one."""
    code, out = await git(["rev-parse", "--is-inside-work-tree"], cwd, ok=(0, 128))
    if code != 0 or out.strip() != "true":
        raise GitError(f"{cwd!r} is not inside a git work tree")
    _, out = await git(["rev-parse", "--show-toplevel", "--git-common-dir", "--show-prefix"], cwd)
    lines = out.split("\n")
    common = real_path(os.path.join(cwd, lines[1]))
    return Repository(toplevel=lines[0], common_dir=common, prefix=lines[2].rstrip("/") if len(lines) > 2 else "")


async def resolve(cwd: str, ref: str) -> str | None:
    """The commit `ref` names in the repository of `cwd`, or None when it names none."""
    if not ref or ref.startswith("-"):
        return None
    code, out = await git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd, ok=(0, 1, 128))
    return out.strip() if code == 0 else None


class Worktrees:
    """Makes, finishes and lists the worktrees of isolated effects, under `root/<effect_id>`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._locks: dict[str, anyio.Lock] = {}

    def path_for(self, effect_id: str) -> Path:
        return self.root / effect_id

    @asynccontextmanager
    async def locked(self, repo: Repository) -> AsyncIterator[None]:
        """Holds the repository for this server's git commands, and against other servers' (flock)."""
        lock = self._locks.setdefault(repo.common_dir, anyio.Lock())
        async with lock:
            fd = os.open(os.path.join(repo.common_dir, "effectd.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                with anyio.fail_after(GIT_TIMEOUT_S):
                    while True:
                        try:
                            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                            break
                        except BlockingIOError:
                            await anyio.sleep(_LOCK_POLL_S)
                yield
            finally:
                os.close(fd)  # releases the flock

    async def add(self, repo: Repository, effect_id: str, base_ref: str) -> dict[str, Any]:
        """Adds the effect's worktree on a new branch `effectd/<effect_id>` at `base_ref` (or takes the
        one an earlier attempt or an earlier server made); returns its workspace as a running effect has it."""
        path, branch = self.path_for(effect_id), branch_of(effect_id)
        self.root.mkdir(parents=True, exist_ok=True)
        ignore = self.root / ".gitignore"
        if not ignore.exists():  # the directory may lie inside a work tree: keep it out of `git status`
            ignore.write_text("*\n")
        async with self.locked(repo):
            base = await resolve(repo.toplevel, base_ref)
            if base is None:
                raise GitError(f"worktree_base {base_ref!r} does not name a commit of {repo.toplevel!r}")
            existing = await resolve(repo.toplevel, f"refs/heads/{branch}")
            if real_path(path) in await self._registered(repo.toplevel):
                pass  # made before (an earlier attempt, or a server that died before the process started)
            elif existing is not None:
                await git(["worktree", "prune"], repo.toplevel)
                await git(["worktree", "add", "--quiet", str(path), branch], repo.toplevel)
            else:
                await git(["worktree", "add", "--quiet", "-b", branch, str(path), base], repo.toplevel)
            await _hold_objects(repo, effect_id)
        (path / repo.prefix).mkdir(parents=True, exist_ok=True)  # cwd may be a directory the base lacks
        return workspace(repo.toplevel, path, branch, base, head=existing or base, kept=True, branch_kept=True)

    async def _registered(self, toplevel: str) -> set[str]:
        _, out = await git(["worktree", "list", "--porcelain"], toplevel)
        return {real_path(line[len("worktree ") :]) for line in out.split("\n") if line.startswith("worktree ")}

    async def finish(
        self,
        repo_dir: str,
        effect_id: str,
        base_commit: str | None,
        *,
        keep: bool,
        message: str,
        path: str | None = None,
        delete_empty_branch: bool = True,
    ) -> dict[str, Any]:
        """Ends the effect's worktree: commits what was left uncommitted to its branch, removes the
        directory unless `keep`, deletes the branch when it holds no commit beyond `base_commit`;
        returns the final workspace. Idempotent: a server that died half way runs it again.

        The directory is kept, whatever `keep` says, when its work could not be committed to the branch
        (the effect checked out something else, or the commit failed): nothing it wrote is lost. It is
        kept and nothing is committed there when it is no longer the worktree effectd made (the effect
        removed its `.git`, or made a repository of its own there): a commit would go into whatever
        repository git now finds there, and removing the directory would throw the work away. The
        workspace's `kept_reason` says why a directory was kept against `keep`.
        """
        where = Path(path) if path else self.path_for(effect_id)
        branch = branch_of(effect_id)
        repo = await locate(repo_dir)
        async with self.locked(repo):
            try:
                present = is_dir(where) and real_path(where) in await self._registered(repo.toplevel)
                reason = await _not_ours(where, repo) if present else None
                if reason is None and present:
                    reason = await self._commit_leftovers(where, branch, message)
                if reason is not None:
                    keep = True
                head = await resolve(repo.toplevel, f"refs/heads/{branch}")
                base = base_commit or head
                ahead = 0
                files: list[str] = []
                insertions = deletions = 0
                if head is not None and base is not None:
                    _, count = await git(["rev-list", "--count", f"{base}..{head}"], repo.toplevel)
                    ahead = int(count.strip() or 0)
                    files, insertions, deletions = await _diff(repo.toplevel, base, head)
                if present and not keep:
                    await self._remove(repo.toplevel, where)
                elif not present and not keep:
                    _remove_if_empty(where)
                kept = is_dir(where)
                if kept and not present and reason is None:
                    reason = (
                        "git no longer lists the directory as a worktree (its administrative files are gone), "
                        "so it was kept as it is"
                    )
                branch_kept = head is not None
                if head is not None and ahead == 0 and not kept and delete_empty_branch:
                    await git(["branch", "-D", "--quiet", branch], repo.toplevel)
                    branch_kept = False
            finally:  # the effect is over, whatever went wrong here: its hold on the objects ends
                await _release_objects(repo, effect_id)
        return workspace(
            repo.toplevel,
            where,
            branch,
            base,
            head=head,
            kept=kept,
            branch_kept=branch_kept,
            files=files,
            insertions=insertions,
            deletions=deletions,
            kept_reason=reason if kept else None,
        )

    async def _commit_leftovers(self, where: Path, branch: str, message: str) -> str | None:
        """Commits everything uncommitted in the worktree to `branch`; why not, when that cannot be done."""
        cwd = str(where)
        code, out = await git(["symbolic-ref", "--quiet", "HEAD"], cwd, ok=(0, 1))
        if code != 0 or out.strip() != f"refs/heads/{branch}":
            head = out.strip() or "detached"
            log.warning("worktree %s is not on %s (HEAD: %s): kept as it is", where, branch, head)
            return f"the worktree is not on its branch {branch} (HEAD: {head}), so its work was not committed"
        try:
            await git(["add", "--all"], cwd)
            code, _ = await git(["diff", "--cached", "--quiet"], cwd, ok=(0, 1))
            if code == 1:
                commit = ["commit", "--quiet", "--no-verify", "--no-gpg-sign", "-m", message]
                await git([*await _identity(cwd), *commit], cwd)
        except GitError as exc:
            log.warning("worktree %s: its work could not be committed, so it is kept: %s", where, exc)
            return f"its work could not be committed: {exc}"
        return None

    async def _remove(self, toplevel: str, where: Path) -> None:
        try:
            await git(["worktree", "remove", "--force", "--force", str(where)], toplevel)
        except GitError as exc:
            log.warning("git worktree remove %s: %s; removing the directory", where, exc)
        if is_dir(where):
            shutil.rmtree(where, ignore_errors=True)
        await git(["worktree", "prune"], toplevel)

    async def branch_head(self, repo_dir: str, effect_id: str) -> str | None:
        """The commit the effect's branch points at, or None when it is gone (or the repository is)."""
        try:
            return await resolve(repo_dir, f"refs/heads/{branch_of(effect_id)}")
        except GitError:
            return None


# --- no object is pruned while an isolated effect runs (issue 24, item 7) ---------------------------
#
# `git gc --prune=now` deletes every unreachable object at once, the objects another worktree's `git
# commit` has written but not yet pointed a ref at included (git documents it as unsafe beside writers;
# effects are concurrent writers). While any isolated effect of a repository runs, the repository is
# marked `extensions.preciousObjects` (with `core.repositoryformatversion` 1, which extensions need):
# git then prunes nothing, and `git gc` still packs. The effects holding the mark are listed in
# `effectd.holder`; the last one to finish puts both settings back as they were. All of it runs under
# the repository's lock, so servers sharing a repository agree.

_HELD = "effectd.holder"
_SAVED = {
    "core.repositoryformatversion": "effectd.savedformatversion",
    "extensions.preciousObjects": "effectd.savedprecious",
}
_UNSET = "unset"


async def _config(repo: Repository, *args: str, ok: Sequence[int] = (0,)) -> tuple[int, str]:
    """`git config` on the repository's shared config file (never a worktree's)."""
    return await git(["config", "--file", os.path.join(repo.common_dir, "config"), *args], repo.toplevel, ok=ok)


async def _holders(repo: Repository) -> list[str]:
    _, out = await _config(repo, "--get-all", _HELD, ok=(0, 1))
    return out.split()


async def _hold_objects(repo: Repository, effect_id: str) -> None:
    """Marks the repository's objects precious for as long as the effect runs (see above)."""
    holders = await _holders(repo)
    if effect_id in holders:
        return  # an earlier attempt, or a server that died, holds it already
    if not holders:
        for key, saved in _SAVED.items():
            code, value = await _config(repo, "--get", key, ok=(0, 1))
            await _config(repo, saved, value.strip() if code == 0 else _UNSET)
        await _config(repo, "core.repositoryformatversion", "1")
        await _config(repo, "extensions.preciousObjects", "true")
    await _config(repo, "--add", _HELD, effect_id)


async def _release_objects(repo: Repository, effect_id: str) -> None:
    """The effect no longer holds the mark; the last holder puts the settings back as they were."""
    holders = await _holders(repo)
    if effect_id not in holders:
        return
    await _config(repo, "--unset-all", _HELD, f"^{effect_id}$")
    if len(holders) > 1:
        return
    for key, saved in _SAVED.items():
        code, value = await _config(repo, "--get", saved, ok=(0, 1))
        if code == 0 and value.strip() != _UNSET:
            await _config(repo, key, value.strip())
        else:
            await _config(repo, "--unset-all", key, ok=(0, 5))
    await _config(repo, "--remove-section", "effectd", ok=(0, 128))


async def _not_ours(where: Path, repo: Repository) -> str | None:
    """Why the directory is no longer the worktree effectd made of `repo`, or None when it still is: git
    run there must find that directory as the top of a work tree of `repo`'s shared git directory."""
    code, out = await git(["rev-parse", "--show-toplevel", "--git-common-dir"], str(where), ok=(0, 128))
    lines = out.split("\n")
    if code != 0 or len(lines) < 2:
        found = "no git repository"
    elif real_path(lines[0]) != real_path(where):
        found = f"the work tree {lines[0]!r}"
    elif real_path(os.path.join(where, lines[1])) != repo.common_dir:
        found = f"another repository ({real_path(os.path.join(where, lines[1]))!r})"
    else:
        return None
    log.warning("worktree %s is no longer a worktree of %s (git finds %s there): kept as it is", where, repo, found)
    return (
        f"the directory is no longer a worktree of {repo.toplevel!r} (git finds {found} there; its .git was "
        "removed or replaced), so nothing was committed and it was kept as it is"
    )


def _remove_if_empty(where: Path) -> None:
    """A directory left empty by a worktree git no longer knows (a crash half way through its removal)."""
    if where.is_dir() and not any(where.iterdir()):
        where.rmdir()


async def _identity(cwd: str) -> list[str]:
    """`-c` options for the commit's author: the repository's configured identity, else effectd's."""
    _, out = await git(["config", "--get-regexp", r"^user\.(name|email)$"], cwd, ok=(0, 1))
    configured = {line.split(" ", 1)[0] for line in out.splitlines()}
    options = []
    for key, fallback in (("user.name", FALLBACK_NAME), ("user.email", FALLBACK_EMAIL)):
        if key not in configured:
            options += ["-c", f"{key}={fallback}"]
    return options


async def _diff(toplevel: str, base: str, head: str) -> tuple[list[str], int, int]:
    """The paths changed from `base` to `head` (at most MAX_CHANGED_FILES + 1), and the lines added and deleted."""
    _, out = await git(["diff", "--numstat", "-z", "--no-renames", base, head], toplevel)
    files: list[str] = []
    insertions = deletions = 0
    for entry in out.split("\0"):
        parts = entry.split("\t", 2)
        if len(parts) != 3:
            continue
        added, deleted, name = parts
        insertions += int(added) if added.isdigit() else 0  # "-" for a binary file
        deletions += int(deleted) if deleted.isdigit() else 0
        files.append(name)
    return files, insertions, deletions


def workspace(
    repo: str,
    path: Path,
    branch: str,
    base: str | None,
    *,
    head: str | None,
    kept: bool,
    branch_kept: bool,
    files: Sequence[str] = (),
    insertions: int = 0,
    deletions: int = 0,
    kept_reason: str | None = None,
) -> dict[str, Any]:
    """The record's `workspace` (CONTRACT.md, "Isolation"); `kept_reason` says why the directory was kept
    when the effect did not ask for it (its work could not be committed, it is no longer effectd's worktree)."""
    return {
        "repo": repo,
        "path": str(path),
        "branch": branch,
        "base_commit": base,
        "head_commit": head,
        "kept": kept,
        "branch_kept": branch_kept,
        "changed_files": list(files[:MAX_CHANGED_FILES]),
        "changed_files_truncated": len(files) > MAX_CHANGED_FILES,
        "insertions": insertions,
        "deletions": deletions,
        "kept_reason": kept_reason,
    }
