"""Sub-agents on one repository, each in a git worktree of its own, all kept, their branches listed.

    python client_examples/worktree_subagents.py [--agents 4] [--mode all] [--repo PATH]

Several coding agents on one checkout overwrite each other's files. With `isolation="worktree"`
effectd gives each one a worktree of the repository on a new branch `effectd/<effect_id>`; when the
agent ends (whatever its status, a cancel included), what it left uncommitted is committed to its
branch, so nothing it wrote is lost. Here every agent edits the same file, `IDEAS.md`; afterwards
each branch holds that agent's edit, and the main checkout is untouched.

`--mode all` (the only mode so far) keeps every agent's result: `keep_worktree=True` keeps each
directory too, so you can look inside; `effectd worktrees` lists them and `--prune` removes the
directories (never the branches).

The agents are effectd's fake harness (`python -m effectd.harness.fake --write FILE` appends its
answer to FILE, as an agent edits a file), so this runs with no agent CLI and no network. With
Claude Code, dispatch `harness="claude"` and a real prompt instead. Without `--repo`, a scratch
repository is made in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

CONFIG = """\
[harness.fake-claude]
command = [{python}, "-m", "effectd.harness.fake", "{{prompt}}"]
parser = "claude"

[harness.fake-claude.env]
FAKE_HARNESS_STEPS = "2"
FAKE_HARNESS_DELAY = "0.1"
"""
IDEAS = [
    "cache the parsed config",
    "retry flaky network tests",
    "document every CLI flag",
    "split the big module in two",
    "add a --json flag to ls",
    "profile the journal writer",
]


def effectd_executable() -> str:
    beside = Path(sys.executable).parent / "effectd"
    found = str(beside) if beside.exists() else shutil.which("effectd")
    if found is None:
        sys.exit("effectd is not installed in this environment: run `pip install -e .` in the repository")
    return found


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def scratch_repository(where: Path) -> Path:
    repo = where / "repo"
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch=main")
    (repo / "IDEAS.md").write_text("# Ideas\n")
    git(repo, "add", "IDEAS.md")
    git(repo, "-c", "user.name=example", "-c", "user.email=example@localhost", "commit", "--quiet", "-m", "start")
    return repo


async def call(client: Client, tool: str, **arguments: Any) -> Any:
    result = await client.call_tool(tool, arguments)
    if result.is_error:
        raise RuntimeError(" ".join(getattr(block, "text", "") for block in result.content))
    return result.structured_content


async def main(workdir: Path, repo: Path, agents: int, mode: str) -> None:
    config = workdir / "effectd.toml"
    config.write_text(CONFIG.format(python=json.dumps(sys.executable)))
    db = workdir / "journal.db"
    server = StdioServerParameters(
        command=effectd_executable(),
        args=["serve", "--config", str(config), "--db", str(db)],
        env=dict(os.environ),
    )
    group = "worktree-agents"
    async with Client(server, read_timeout_seconds=70) as client:
        labels = {}
        for number in range(agents):
            label = f"agent-{number + 1}"
            idea = IDEAS[number % len(IDEAS)]
            record = await call(
                client,
                "dispatch_effect",
                harness="fake-claude",
                prompt=f"Add one idea to IDEAS.md ({idea})",
                args=["--write", "IDEAS.md", "--answer", f"- {idea} ({label})"],
                cwd=str(repo),
                isolation="worktree",  # a worktree of its own, on branch effectd/<effect_id>
                keep_worktree=mode == "all",  # keep the directory too, to look inside
                background=True,
                group=group,
                label=label,
            )
            labels[record["effect_id"]] = label
            print(f"dispatched {label} {record['effect_id']}")

        print("\nas they complete:")
        cursor, done = 0, 0
        while done < agents:
            answer = await call(client, "await_group", group=group, mode="any", cursor=cursor, timeout_s=30)
            cursor = answer["cursor"]
            for record in answer["done"]:
                done += 1
                workspace = record["workspace"]
                print(
                    f"  {record['label']}: {record['status']}, branch {workspace['branch']} "
                    f"({', '.join(workspace['changed_files'])}: +{workspace['insertions']} -{workspace['deletions']}), "
                    f"worktree {'kept at ' + workspace['path'] if workspace['kept'] else 'removed'}"
                )


def report(repo: Path, db: Path) -> None:
    """The branches the agents left, then `effectd worktrees --prune`."""
    print("\nbranches (git branch --list 'effectd/*'), each with its agent's edit of IDEAS.md:")
    for branch in git(repo, "branch", "--list", "effectd/*", "--format=%(refname:short)").split():
        print(f"  {branch}: {git(repo, 'show', f'{branch}:IDEAS.md').splitlines()[-1]}")
    untouched = git(repo, "status", "--porcelain", "IDEAS.md") == ""
    print(f"main's IDEAS.md is untouched: {untouched}")
    worktrees = git(repo, "worktree", "list").splitlines()
    print(f"git worktree list: {len(worktrees)} (main and {len(worktrees) - 1} kept)")

    effectd = effectd_executable()
    print("\neffectd worktrees --prune (removes the kept directories, keeps the branches):")
    listing = subprocess.run([effectd, "worktrees", "--prune", "--db", str(db)], capture_output=True, text=True)
    print("\n".join(f"  {line}" for line in listing.stdout.splitlines()))
    left = len(git(repo, "worktree", "list").splitlines())
    branches = len(git(repo, "branch", "--list", "effectd/*").splitlines())
    print(f"after --prune: git worktree list: {left}; effectd/* branches: {branches}")
    print(f"merge one with: git -C {repo} merge effectd/<effect_id>")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=4, help="how many sub-agents (default 4)")
    parser.add_argument("--mode", choices=["all"], default="all", help="all: keep every agent's work")
    parser.add_argument("--repo", type=Path, help="a git repository to work on (default: a scratch one)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="effectd-worktrees-") as tmp:
        target = options.repo.resolve() if options.repo else scratch_repository(Path(tmp))
        anyio.run(main, Path(tmp), target, options.agents, options.mode)
        report(target, Path(tmp) / "journal.db")
