"""Isolated effects that do hostile things to git, through a real stdio server on real repositories.

Issue 24 ("the second probe"): an effect that re-made its worktree as a repository of its own lost its
work (effectd committed into the new repository and removed the directory); a `git gc --prune=now` in
one worktree deleted a commit another worktree was making.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from tests.helpers.git import git, make_repo
from tests.helpers.mcp import call
from tests.helpers.processes import stdio_params

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(shutil.which("git") is None, reason="isolation needs git on PATH"),
]

WORK = "echo 'the work' > work.txt"
# What each effect does to its worktree (then it writes work.txt, unless the case says otherwise).
HOSTILE = {
    "reinit": f"rm -rf .git && git init -q -b effectd/$EFFECTD_EFFECT_ID && {WORK}",
    "git_removed": f"rm -f .git && {WORK}",
    "head_rewritten": f"{WORK} && git checkout -q --detach",
    "index_lock": f'{WORK} && touch "$(git rev-parse --git-dir)/index.lock"',
    "packed_refs_lock": f'{WORK} && touch "$(git rev-parse --git-common-dir)/packed-refs.lock"',
    "admin_dir_deleted": f'{WORK} && rm -rf "$(git rev-parse --git-dir)"',
}


def fsck(repo: Path) -> str:
    done = subprocess.run(["git", "fsck", "--full", "--strict"], cwd=repo, capture_output=True, text=True)
    return "" if done.returncode == 0 else done.stdout + done.stderr


def on_branch(repo: Path, workspace: dict[str, Any]) -> str | None:
    done = subprocess.run(
        ["git", "show", f"refs/heads/{workspace['branch']}:work.txt"], cwd=repo, capture_output=True, text=True
    )
    return done.stdout if done.returncode == 0 else None


async def test_hostile_git_in_a_worktree_never_loses_the_effects_work_and_a_reinit_is_kept_as_it_is(tmp_path: Path):
    repo = make_repo(tmp_path / "repo")
    records: dict[str, dict[str, Any]] = {}
    async with Client(stdio_params(tmp_path / "journal.db", "--allow-any-command"), read_timeout_seconds=70) as c:
        for case, script in HOSTILE.items():
            records[case] = await call(
                c, "dispatch_effect", command=["sh", "-c", script], cwd=str(repo), isolation="worktree", wait_s=30
            )
            (repo / ".git" / "packed-refs.lock").unlink(missing_ok=True)  # the next case would trip on it
        assert (await call(c, "list_effects"))["effects"]  # the server is still there
    assert_no_work_lost(repo, records)


def assert_no_work_lost(repo: Path, records: dict[str, dict[str, Any]]) -> None:
    for case, record in records.items():
        assert record["status"] == "succeeded", (case, record)
        workspace = record["workspace"]
        in_directory = Path(workspace["path"], "work.txt")
        kept_work = in_directory.read_text() if in_directory.exists() else None
        assert "the work\n" in (on_branch(repo, workspace), kept_work), (case, workspace)
        if workspace["kept"]:
            assert workspace["kept_reason"], (case, workspace)
    # The re-made repository: kept as the effect left it, not committed into, its branch untouched.
    reinit = records["reinit"]["workspace"]
    assert reinit["kept"] is True and "no longer a worktree" in reinit["kept_reason"]
    assert Path(reinit["path"], "work.txt").read_text() == "the work\n"
    nested = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=reinit["path"], capture_output=True)
    assert nested.returncode != 0, "effectd committed into the effect's own repository"
    assert reinit["head_commit"] == reinit["base_commit"] and reinit["branch"] in git(repo, "branch", "--list")
    assert "no longer a worktree" in records["git_removed"]["workspace"]["kept_reason"]
    assert "not on its branch" in records["head_rewritten"]["workspace"]["kept_reason"]
    assert "no longer lists" in records["admin_dir_deleted"]["workspace"]["kept_reason"]
    git(repo, "worktree", "prune")
    assert fsck(repo) == ""
