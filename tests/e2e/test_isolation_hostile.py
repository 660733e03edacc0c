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


# Makes a commit in its worktree the way `git commit` does (objects first, then the ref), with a
# concurrent `git gc --prune=now` in another worktree forced into the window between the two.
MAKE_COMMIT = """
blob=$(echo 'made in the window' | git hash-object -w --stdin) || exit 3
tree=$(printf '100644 blob %s\\tmade.txt\\n' "$blob" | git mktree) || exit 3
commit=$(git commit-tree "$tree" -p HEAD -m 'made by the writer') || exit 3
touch "$1/written"
n=0; while [ ! -e "$1/pruned" ]; do n=$((n+1)); [ $n -gt 3000 ] && exit 4; sleep 0.01; done
git update-ref HEAD "$commit" && git reset -q --hard
"""
PRUNE = """
n=0; while [ ! -e "$1/written" ]; do n=$((n+1)); [ $n -gt 3000 ] && exit 4; sleep 0.01; done
echo "precious: $(git config extensions.preciousObjects)"
git gc --quiet --prune=now; code=$?; touch "$1/pruned"; exit $code
"""


def config(repo: Path, key: str) -> str | None:
    done = subprocess.run(["git", "config", "--get", key], cwd=repo, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


async def test_a_git_gc_prune_now_in_one_worktree_cannot_take_another_worktrees_commit(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    git(repo, "config", "gc.reflogExpire", "now")  # the user's own settings stay as they were
    handshake = tmp_path / "handshake"
    handshake.mkdir()
    async with Client(stdio_params(tmp_path / "journal.db", "--allow-any-command"), read_timeout_seconds=70) as c:
        ids = []
        for script in (MAKE_COMMIT, PRUNE):
            command = ["sh", "-c", script, "sh", str(handshake)]
            started = await call(
                c, "dispatch_effect", command=command, cwd=str(repo), isolation="worktree", background=True
            )
            ids.append(started["effect_id"])
        await call(c, "await_group", effect_ids=ids, timeout_s=55)
        writer, pruner = [await call(c, "poll_effect", effect_id=effect_id) for effect_id in ids]
    assert (handshake / "pruned").exists()
    # git ran its gc (packing, no pruning) and said nothing was wrong; the writer's commit survived it.
    assert pruner["status"] == "succeeded", (pruner, pruner["output_tail"])
    assert "precious: true" in pruner["output_tail"]
    assert writer["status"] == "succeeded", (writer, writer["output_tail"])
    branch = writer["workspace"]["branch"]
    assert git(repo, "log", "-1", "--format=%s", branch).strip() == "made by the writer"
    assert git(repo, "show", f"{branch}:made.txt") == "made in the window\n"
    assert "made.txt" in writer["workspace"]["changed_files"]
    assert fsck(repo) == ""
    # Once no isolated effect runs, the repository's settings are as they were: gc prunes again.
    assert config(repo, "extensions.preciousObjects") is None
    assert config(repo, "core.repositoryformatversion") == "0"
    assert config(repo, "effectd.holder") is None and config(repo, "gc.reflogExpire") == "now"
    (tmp_path / "unreachable.txt").write_text("unreachable\n")
    loose = git(repo, "hash-object", "-w", str(tmp_path / "unreachable.txt")).strip()
    git(repo, "gc", "--quiet", "--prune=now")
    with pytest.raises(subprocess.CalledProcessError):  # pruned: gone
        git(repo, "cat-file", "-e", loose)
