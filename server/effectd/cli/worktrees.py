"""`effectd worktrees [--prune]`: the git worktrees and branches effectd made for isolated effects.

The list comes from the journal (every effect that got a worktree, with the workspace its end
recorded) and from git as it is now (is the directory still there, does the branch still exist).
`--prune` removes the kept worktree directories of terminal effects, committing first what was left
uncommitted in them, so nothing is lost; it never removes a branch. The journal is only read: the
records keep the workspace as the effect's end left it.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import anyio

from effectd.cli.common import TERMINAL, complain, print_json, settings_of
from effectd.journal.reader import JournalReader
from effectd.runner.git import GitError, Worktrees, is_dir


def add_parser(sub: Any) -> None:
    worktrees = sub.add_parser("worktrees", help="list the git worktrees and branches of isolated effects")
    worktrees.add_argument("--prune", action="store_true", help="remove the kept worktrees of ended effects")
    worktrees.add_argument("--json", action="store_true")
    worktrees.add_argument(
        "--db", help="journal (default $EFFECTD_DB, else `db` in the config, else .effectd/journal.db)"
    )
    worktrees.add_argument("--config", help="TOML configuration (default $EFFECTD_CONFIG, else ./effectd.toml)")
    worktrees.set_defaults(func=cmd_worktrees)


def cmd_worktrees(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    rows = [row for row in JournalReader(settings.db).effects() if row.get("workspace")]
    rows.reverse()  # oldest first
    return anyio.run(_run, Worktrees(settings.worktree_dir), rows, args.prune, args.json)


async def _run(worktrees: Worktrees, rows: list[dict[str, Any]], prune: bool, as_json: bool) -> int:
    entries, failed = [], False
    for row in rows:
        workspace = json.loads(row["workspace"])
        entry = {
            "effect_id": row["effect_id"],
            "status": row["status"],
            "repo": workspace["repo"],
            "branch": workspace["branch"],
            "path": workspace["path"],
            "changed_files": len(workspace.get("changed_files") or []),
        }
        if prune and row["status"] in TERMINAL and is_dir(workspace["path"]):
            try:
                await worktrees.finish(
                    workspace["repo"],
                    row["effect_id"],
                    workspace.get("base_commit"),
                    keep=False,
                    message=f"effectd: left in the kept worktree of {row['effect_id']} (effectd worktrees --prune)",
                    path=workspace["path"],
                    delete_empty_branch=False,
                )
                entry["pruned"] = True
            except GitError as exc:
                complain(f"{row['effect_id']}: could not prune {workspace['path']}: {exc}")
                failed = True
        entry["directory"] = is_dir(workspace["path"])
        entry["branch_exists"] = await worktrees.branch_head(workspace["repo"], row["effect_id"]) is not None
        entries.append(entry)
    if as_json:
        print_json(entries)
    elif not entries:
        print('no worktrees: no effect ran with isolation "worktree"')
    else:
        print(f"{'EFFECT':<30} {'STATUS':<10} {'BRANCH':<8} {'DIR':<8} FILES  BRANCH / PATH")
        for e in entries:
            directory = "pruned" if e.get("pruned") else "kept" if e["directory"] else "-"
            print(
                f"{e['effect_id']:<30} {e['status']:<10} {'yes' if e['branch_exists'] else 'deleted':<8} "
                f"{directory:<8} {e['changed_files']:>5}  {e['branch']}  {e['path']}"
            )
    return 1 if failed else 0
