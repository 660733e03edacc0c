"""Isolation: an effect with `isolation: "worktree"` runs in a git worktree of its own.

The checks at dispatch (`check`), the worktree made before the process starts and journaled as
`EFFECT_PROGRESS {"workspace": ...}` (`prepare`), and its end (`finish`): what was left uncommitted
committed to the branch, the directory removed unless kept, an empty branch deleted; the final
`workspace` goes into the effect's terminal event. The git commands themselves run in the runner
package (`effectd.runner.git`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from effectd.errors import InvalidRequestError
from effectd.journal.projection import Event
from effectd.model.records import EffectSpec
from effectd.runner.git import GitError, Worktrees, is_dir, locate, resolve
from effectd.supervisor.attempt import Record
from effectd.supervisor.effect import Effect

log = logging.getLogger("effectd")

WORKSPACE = "workspace"  # the EFFECT_PROGRESS data key that journals a new worktree


def isolated(spec: EffectSpec) -> bool:
    return spec.isolation == "worktree"


async def check(spec: EffectSpec) -> None:
    """Refuses an isolated effect whose `cwd` is not in a git work tree, or whose base names no commit."""
    if not isolated(spec):
        return
    cwd = spec.cwd or os.getcwd()
    try:
        repo = await locate(cwd)
    except GitError:
        raise InvalidRequestError(
            f'isolation "worktree" needs a `cwd` inside a git work tree, and {cwd!r} is not inside one; '
            'give a `cwd` in a git repository (with at least one commit), or isolation "none"'
        ) from None
    base = spec.worktree_base or "HEAD"
    if await resolve(cwd, base) is None:
        hint = " (the repository has no commit yet: commit once first)" if base == "HEAD" else ""
        raise InvalidRequestError(
            f"worktree_base {base!r} does not name a commit of the repository at {repo.toplevel!r}{hint}; "
            "give a branch, tag or commit id that exists there"
        )


class Workspaces:
    """Makes and finishes isolated effects' worktrees, journaling them through `record`."""

    def __init__(self, worktrees: Worktrees, record: Record) -> None:
        self.worktrees = worktrees
        self._record = record

    async def prepare(self, effect: Effect) -> str:
        """The directory the effect's process starts in: its worktree (made now, or by an earlier attempt),
        at the same place relative to the top as the effect's `cwd`. GitError when it cannot be made."""
        spec = effect.spec
        repo = await locate(spec.cwd or os.getcwd())
        current = effect.state.workspace
        if current is not None and is_dir(current["path"]):
            return os.path.join(current["path"], repo.prefix)
        made = await self.worktrees.add(repo, effect.effect_id, spec.worktree_base or "HEAD")
        if current is not None and current.get("base_commit"):
            made["base_commit"] = current["base_commit"]
        await self._record(effect, Event("EFFECT_PROGRESS", effect.run_id, effect.effect_id, {WORKSPACE: made}))
        path = os.path.join(made["path"], repo.prefix)
        os.makedirs(path, exist_ok=True)
        return path

    async def finish(self, effect: Effect, status: str, why: str | None = None) -> dict[str, Any] | None:
        """Ends the effect's worktree (see `finish`)."""
        return await finish(self.worktrees, effect, status, why)


async def finish(worktrees: Worktrees, effect: Effect, status: str, why: str | None = None) -> dict[str, Any] | None:
    """Ends the effect's worktree (see `Worktrees.finish`); the final workspace, or None when it had none.
    Never raises: the effect's end must be written whatever happens here. A failure (git's, a timeout,
    the file system's) is logged and leaves the directory where it is: nothing the effect wrote is lost."""
    spec = effect.spec
    if not isolated(spec):
        return None
    current = effect.state.workspace
    if current is None and not is_dir(worktrees.path_for(effect.effect_id)):
        return None  # it never got a worktree (cancelled or skipped before it started)
    repo_dir = current["repo"] if current is not None else (spec.cwd or os.getcwd())
    message = f"effectd: work left uncommitted by {effect.effect_id} ({status}{f': {why}' if why else ''})"
    message += f"\n\nEffectd-Effect: {effect.effect_id}\n"
    try:
        return await worktrees.finish(
            repo_dir,
            effect.effect_id,
            current.get("base_commit") if current else None,
            keep=spec.keep_worktree,
            message=message,
            path=current.get("path") if current else None,
        )
    except Exception as exc:
        log.warning("effect %s: its worktree could not be finished; left in place: %s", effect.effect_id, exc)
        if current is None:
            return None
        kept = is_dir(current["path"])
        return {**current, "kept": kept, "kept_reason": f"its worktree could not be finished: {exc}" if kept else None}
