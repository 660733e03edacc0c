"""The demo's isolation section: fake sub-agents that all edit one file of one scratch repository, each in
a git worktree of its own (`isolation: "worktree"`), and what is left afterwards: one branch per agent
that changed something, no branch for the one that changed nothing, no worktree directory at all."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from mcp import Client

from effectd.demo.kit import HARNESS, DemoFailed, Pace, Screen, call

GROUP = "demo-isolation"
NOTES = "NOTES.md"


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise DemoFailed(f"git {' '.join(args)} failed in {repo}: {done.stderr.strip()}")
    return done.stdout


def scratch_repository(work: Path) -> Path:
    """A repository with one commit, for the sub-agents to work on."""
    repo = work / "scratch-repo"
    repo.mkdir()
    _git(repo, "init", "--quiet", "--initial-branch=main")
    (repo / NOTES).write_text("# Notes\n")
    _git(repo, "add", NOTES)
    identity = ["-c", "user.name=effectd demo", "-c", "user.email=demo@localhost"]
    _git(repo, *identity, "commit", "--quiet", "-m", "scratch repository for the demo")
    return repo


async def isolation(client: Client, screen: Screen, pace: Pace, work: Path) -> tuple[list[str], Path]:
    """Section 6; returns the ids of the effects it ran and the scratch repository."""
    repo = scratch_repository(work)
    screen.section('6. Sub-agents on one repository, each in its own git worktree (isolation: "worktree")')
    screen.note(f"scratch repository {repo}; every agent edits {NOTES}: in one checkout they would collide")
    agents: list[tuple[str, list[str]]] = [
        (f"agent-{name}", ["--write", NOTES, "--answer", f"- {name}: {idea}"])
        for name, idea in (("ada", "cache the parser"), ("bob", "retry flaky tests"), ("cy", "document the CLI"))
    ]
    agents.append(("agent-reader", []))  # reads and answers, changes nothing
    labels: dict[str, str] = {}
    for label, args in agents:
        record = await call(
            client,
            "dispatch_effect",
            harness=HARNESS,
            prompt=f"{label}: improve the project",
            args=["--steps", "1", "--delay", str(pace.agent_delay_s[0]), *args],
            cwd=str(repo),
            isolation="worktree",
            group=GROUP,
            label=label,
            background=True,
        )
        labels[record["effect_id"]] = label
    outcome = await call(client, "await_group", group=GROUP, timeout_s=50)
    if not outcome["complete"]:
        raise DemoFailed(f"the isolated sub-agents did not finish: {outcome['pending']}")
    records: dict[str, dict[str, Any]] = {r["effect_id"]: r for r in outcome["done"]}
    for effect_id, label in labels.items():
        record = records[effect_id]
        workspace = record.get("workspace") or {}
        if record["status"] != "succeeded" or not workspace:
            raise DemoFailed(f"{label} ended {record['status']} ({record.get('error')}), workspace {workspace}")
        if workspace["branch_kept"]:
            files = ", ".join(workspace["changed_files"])
            what = f"branch {workspace['branch']}: {files} (+{workspace['insertions']} -{workspace['deletions']})"
        else:
            what = "changed nothing: its branch was deleted"
        screen.say(f"   {screen.label(label)} {screen.status(record['status'])}, {what}")
    branches = _git(repo, "branch", "--list", "effectd/*", "--format=%(refname:short)").split()
    worktrees = [
        line for line in _git(repo, "worktree", "list", "--porcelain").splitlines() if line.startswith("worktree ")
    ]
    screen.say(
        f"   git branch --list 'effectd/*': {len(branches)} branches; git worktree list: {len(worktrees)} (main only)"
    )
    for branch in branches:
        screen.say(f"     {branch}: {_git(repo, 'show', f'{branch}:{NOTES}').strip().splitlines()[-1]}")
    untouched = (repo / NOTES).read_text() == "# Notes\n"
    screen.say(f"   the main checkout's {NOTES} is {'untouched' if untouched else 'CHANGED'}")
    if len(branches) != 3 or len(worktrees) != 1 or not untouched:
        raise DemoFailed(f"isolation: branches {branches}, worktrees {worktrees}, main checkout untouched {untouched}")
    screen.say("   " + screen.good("each agent's work is on its own branch; no worktree directory was left behind"))
    return list(labels), repo
