"""Throwaway git repositories, for the isolation tests (effects in worktrees of their own)."""

from __future__ import annotations

import subprocess
from pathlib import Path

WRITE = (
    "import sys, pathlib; p = pathlib.Path(sys.argv[1]); "
    "p.parent.mkdir(parents=True, exist_ok=True); p.write_text(sys.argv[2])"
)


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout


def make_repo(where: Path, identity: bool = True) -> Path:
    """A repository with one commit: README.md and src/app.py."""
    where.mkdir(parents=True)
    git(where, "init", "--quiet", "--initial-branch=main")
    if identity:
        git(where, "config", "user.name", "Repo Owner")
        git(where, "config", "user.email", "owner@example.com")
    (where / "README.md").write_text("hello\n")
    (where / "src").mkdir()
    (where / "src" / "app.py").write_text("print('app')\n")
    git(where, "add", "-A")
    git(where, "-c", "user.name=Setup", "-c", "user.email=setup@example.com", "commit", "--quiet", "-m", "initial")
    return where
