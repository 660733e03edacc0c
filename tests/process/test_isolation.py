"""Isolation: an effect with `isolation: "worktree"` runs in a git worktree of its own, on real repositories."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from contextlib import suppress
from pathlib import Path

import anyio
import pytest
from mcp import Client

from effectd.engine.core import cancel_offline
from effectd.harness.profiles import profile_from_config
from effectd.journal.store import replay_projection
from tests.helpers.git import WRITE, git, make_repo
from tests.helpers.mcp import call, call_error, connected, read_until
from tests.helpers.processes import event_count, pid_alive, py, stdio_params

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(shutil.which("git") is None, reason="isolation needs git on PATH"),
]

# Writes a file, says so, then waits to be stopped: its work is never committed by the effect itself.
WRITE_AND_WAIT = WRITE + "; print('written', flush=True); import time; time.sleep(120)"


def branches(repo: Path) -> list[str]:
    return git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/effectd/").split()


def worktrees(repo: Path) -> list[str]:
    listing = git(repo, "worktree", "list", "--porcelain").splitlines()
    return [line.split()[1] for line in listing if line.startswith("worktree ")]


def exists(path: str | Path) -> bool:
    return os.path.exists(path)


def is_dir(path: str | Path) -> bool:
    return os.path.isdir(path)


def assert_fsck(repo: Path) -> None:
    fsck = subprocess.run(["git", "fsck", "--full", "--strict"], cwd=repo, capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def assert_sound(repo: Path) -> None:
    """`git fsck` finds nothing wrong and only the main worktree is left."""
    assert_fsck(repo)
    assert worktrees(repo) == [str(repo)]
    assert git(repo, "status", "--porcelain") == ""


async def run_isolated(settings, cwd: Path, command: list[str], wait_s: float = 30, **options) -> dict:
    """Runs one effect in a worktree of the repository at ``cwd`` on a server of its own; returns its record."""
    async with connected(settings) as (_, client):
        return await call(
            client, "dispatch_effect", command=command, cwd=str(cwd), isolation="worktree", wait_s=wait_s, **options
        )


async def start_writing(client: Client, repo: Path, path: str, text: str) -> str:
    """Starts an isolated effect that writes ``text`` to ``path`` and waits; returns its id once it wrote."""
    started = await call(
        client,
        "dispatch_effect",
        command=py(WRITE_AND_WAIT, path, text),
        cwd=str(repo),
        isolation="worktree",
        background=True,
    )
    await read_until(client, started["effect_id"], "written")
    return str(started["effect_id"])


async def test_an_isolated_effect_commits_its_change_to_its_own_branch_and_leaves_no_directory(settings, tmp_path):
    repo = make_repo(tmp_path / "repo")
    command = py(WRITE + "; import os; print(os.getcwd())", "notes.txt", "from the effect\n")
    record = await run_isolated(settings, repo / "src", command)
    assert record["status"] == "succeeded"
    workspace = record["workspace"]
    branch = f"effectd/{record['effect_id']}"
    assert workspace["branch"] == branch and workspace["repo"] == str(repo)
    # It ran in its worktree, in the same directory relative to the top as `cwd`.
    assert record["output_tail"].strip() == os.path.join(workspace["path"], "src")
    assert workspace["changed_files"] == ["src/notes.txt"] and workspace["changed_files_truncated"] is False
    assert (workspace["insertions"], workspace["deletions"]) == (1, 0)
    assert workspace["kept"] is False and not exists(workspace["path"])
    assert workspace["branch_kept"] is True
    assert workspace["base_commit"] == git(repo, "rev-parse", "main").strip()
    assert workspace["head_commit"] == git(repo, "rev-parse", branch).strip() != workspace["base_commit"]
    assert git(repo, "show", f"{branch}:src/notes.txt") == "from the effect\n"
    # The commit is the repository's configured identity; the main checkout never saw the file.
    assert git(repo, "log", "-1", "--format=%an <%ae>", branch).strip() == "Repo Owner <owner@example.com>"
    assert not exists(repo / "src" / "notes.txt")
    assert_sound(repo)
    # The journal holds the same workspace: replay gives it back.
    replayed = {row["effect_id"]: row for row in (await replay_projection(settings.db))["effects"]}
    assert json.loads(replayed[record["effect_id"]]["workspace"]) == workspace


async def test_without_a_configured_identity_the_commit_is_made_as_effectd(settings, tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-global-config"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    repo = make_repo(tmp_path / "repo", identity=False)
    record = await run_isolated(settings, repo, py(WRITE, "a.txt", "a"))
    branch = record["workspace"]["branch"]
    assert git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>", branch).strip() == (
        "effectd <effectd@localhost>|effectd <effectd@localhost>"
    )


async def test_an_effect_that_changed_nothing_leaves_no_branch_and_no_directory(settings, tmp_path):
    repo = make_repo(tmp_path / "repo")
    record = await run_isolated(settings, repo, py("print('read only')"))
    workspace = record["workspace"]
    assert record["status"] == "succeeded"
    assert workspace["branch_kept"] is False and workspace["kept"] is False
    assert workspace["changed_files"] == [] and workspace["head_commit"] == workspace["base_commit"]
    assert branches(repo) == [] and not exists(workspace["path"])
    assert_sound(repo)


async def test_a_cancelled_effects_uncommitted_work_is_on_its_branch(settings, tmp_path):
    repo = make_repo(tmp_path / "repo")
    async with connected(settings) as (_, client):
        effect_id = await start_writing(client, repo, "README.md", "rewritten by a cancelled agent\n")
        running = await call(client, "poll_effect", effect_id=effect_id)
        assert running["workspace"]["kept"] is True and is_dir(running["workspace"]["path"])
        record = await call(client, "cancel_effect", effect_id=effect_id, reason="enough")
    assert record["status"] == "cancelled" and record["cancel_reason"] == "user"
    workspace = record["workspace"]
    assert workspace["branch_kept"] is True and workspace["changed_files"] == ["README.md"]
    assert (workspace["insertions"], workspace["deletions"]) == (1, 1)
    assert git(repo, "show", f"{workspace['branch']}:README.md") == "rewritten by a cancelled agent\n"
    assert "cancelled" in git(repo, "log", "-1", "--format=%B", workspace["branch"])
    assert (repo / "README.md").read_text() == "hello\n"
    assert not exists(workspace["path"])
    assert_sound(repo)


async def test_keep_worktree_keeps_the_directory_and_the_cli_lists_and_prunes_it(settings, tmp_path):
    repo = make_repo(tmp_path / "repo")
    record = await run_isolated(settings, repo, py(WRITE, "kept.txt", "keep me\n"), keep_worktree=True)
    workspace = record["workspace"]
    path = Path(workspace["path"])
    assert workspace["kept"] is True and (path / "kept.txt").read_text() == "keep me\n"
    # Kept, and committed all the same: the branch holds the work, the directory is clean.
    assert git(path, "status", "--porcelain") == "" and workspace["branch_kept"] is True
    assert git(repo, "show", f"{workspace['branch']}:kept.txt") == "keep me\n"

    listed = effectd("worktrees", "--db", str(settings.db))
    assert listed.returncode == 0, listed.stderr
    assert record["effect_id"] in listed.stdout and workspace["branch"] in listed.stdout and str(path) in listed.stdout
    (path / "late.txt").write_text("written by hand after the effect\n")
    pruned = effectd("worktrees", "--prune", "--db", str(settings.db))
    assert pruned.returncode == 0, pruned.stderr
    assert not exists(path) and branches(repo) == [workspace["branch"]]
    # Pruning commits what was left in the directory first: nothing is lost.
    assert git(repo, "show", f"{workspace['branch']}:late.txt") == "written by hand after the effect\n"
    assert_sound(repo)


def effectd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "effectd.cli", *args], capture_output=True, text=True, timeout=60, check=False
    )


async def test_isolation_arguments_that_cannot_work_are_refused_and_nothing_is_written(settings, tmp_path):
    repo = make_repo(tmp_path / "repo")
    plain = tmp_path / "plain"
    plain.mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "--quiet")
    async with connected(settings) as (_, client):
        text = await call_error(client, "dispatch_effect", command=py("pass"), cwd=str(plain), isolation="worktree")
        assert "inside a git work tree" in text and str(plain) in text
        text = await call_error(
            client, "dispatch_effect", command=py("pass"), cwd=str(repo), isolation="worktree", worktree_base="nope"
        )
        assert "worktree_base 'nope' does not name a commit" in text
        text = await call_error(client, "dispatch_effect", command=py("pass"), cwd=str(empty), isolation="worktree")
        assert "no commit yet" in text
        text = await call_error(client, "dispatch_effect", command=py("pass"), cwd=str(repo), keep_worktree=True)
        assert "`keep_worktree` goes with isolation" in text
        text = await call_error(client, "dispatch_effect", command=py("pass"), cwd=str(repo), isolation="copy")
        assert "isolation" in text and "worktree" in text
        text = await call_error(
            client,
            "dispatch_flow",
            steps=[
                {"id": "ok", "command": py("pass"), "cwd": str(repo), "isolation": "worktree"},
                {"id": "bad", "command": py("pass"), "cwd": str(plain), "isolation": "worktree"},
            ],
        )
        assert "step 'bad'" in text and "inside a git work tree" in text
        text = await call_error(
            client,
            "dispatch_flow",
            steps=[
                {"id": "a", "command": py("pass"), "cwd": str(repo)},
                {"id": "b", "needs": ["a"], "command": py("pass", "{{steps.a.workspace.branch}}")},
            ],
        )
        assert 'isolation "none"' in text
        assert (await call(client, "list_effects"))["effects"] == []
    assert event_count(settings.db) == 0
    assert branches(repo) == [] and worktrees(repo) == [str(repo)]


async def test_an_isolated_effect_can_start_from_another_base(settings, tmp_path):
    repo = make_repo(tmp_path / "repo")
    git(repo, "switch", "--quiet", "-c", "feature")
    (repo / "feature.txt").write_text("only on feature\n")
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", "feature")
    git(repo, "switch", "--quiet", "main")
    command = py("import pathlib; print(pathlib.Path('feature.txt').read_text())")
    record = await run_isolated(settings, repo, command, worktree_base="feature")
    assert record["status"] == "succeeded" and "only on feature" in record["output_tail"]
    assert record["workspace"]["base_commit"] == git(repo, "rev-parse", "feature").strip()
    assert branches(repo) == []


async def test_twenty_concurrent_isolated_effects_on_one_repository_each_get_their_own_branch(settings, tmp_path):
    repo = make_repo(tmp_path / "repo")
    count = 20
    # Each edits the same file differently and adds a file of its own: in one checkout they would collide.
    code = WRITE + "; pathlib.Path('README.md').write_text(f'edited by {sys.argv[3]}\\n')"
    async with connected(settings, max_concurrency=count) as (_, client):
        dispatched = [
            await call(
                client,
                "dispatch_effect",
                command=py(code, f"agent-{i}.txt", f"work of agent {i}\n", str(i)),
                cwd=str(repo),
                isolation="worktree",
                group="swarm",
                background=True,
            )
            for i in range(count)
        ]
        outcome = await call(client, "await_group", group="swarm", timeout_s=55)
        while not outcome["complete"]:
            outcome = await call(client, "await_group", group="swarm", timeout_s=55)
        records = {r["effect_id"]: r for r in (await call(client, "list_effects", group="swarm"))["effects"]}
    assert len(records) == count
    for i, sent in enumerate(dispatched):
        record = records[sent["effect_id"]]
        assert record["status"] == "succeeded", record
        branch = record["workspace"]["branch"]
        assert sorted(record["workspace"]["changed_files"]) == ["README.md", f"agent-{i}.txt"]
        assert git(repo, "show", f"{branch}:agent-{i}.txt") == f"work of agent {i}\n"
        assert git(repo, "show", f"{branch}:README.md") == f"edited by {i}\n"
    assert sorted(branches(repo)) == sorted(f"effectd/{sent['effect_id']}" for sent in dispatched)
    assert_sound(repo)
    assert not any(settings.worktree_dir.glob("eff_*"))


async def test_a_flow_of_three_isolated_sub_agents_then_a_step_that_merges_their_branches(settings, tmp_path):
    repo = make_repo(tmp_path / "repo")
    # Three sub-agents (the fake Claude Code as a harness profile), each edits a file of its own.
    fake = profile_from_config(
        "fake", {"command": [sys.executable, "-m", "effectd.harness.fake", "{args}", "{prompt}"], "parser": "claude"}
    )
    agents = [
        {
            "id": f"agent_{name}",
            "harness": "fake",
            "prompt": f"work on {name}",
            "args": ["--steps", "2", "--delay", "0.4", "--write", f"{name}.md", "--answer", f"{name} was here"],
            "cwd": str(repo),
            "isolation": "worktree",
        }
        for name in ("a", "b", "c")
    ]
    merge = (
        "import subprocess, sys; "
        "subprocess.run(['git', 'merge', '--quiet', '--no-edit', *sys.argv[1:4]], check=True); "
        "print('merged', *sys.argv[1:])"
    )
    review = {
        "id": "merge",
        "needs": ["agent_a", "agent_b", "agent_c"],
        "command": py(
            merge,
            "{{steps.agent_a.workspace.branch}}",
            "{{steps.agent_b.workspace.branch}}",
            "{{steps.agent_c.workspace.branch}}",
            "{{steps.agent_a.workspace.head_commit}}",
        ),
        "cwd": str(repo),
        "isolation": "worktree",
    }
    async with connected(settings, harnesses={**settings.harnesses, "fake": fake}) as (_, client):
        flow = await call(client, "dispatch_flow", steps=[*agents, review], wait_s=55)
        assert flow["status"] == "succeeded", flow
        steps = {step["step_id"]: step for step in flow["steps"]}
        records = {
            step_id: await call(client, "poll_effect", effect_id=step["effect_id"]) for step_id, step in steps.items()
        }
    agent_branches = [records[f"agent_{name}"]["workspace"]["branch"] for name in ("a", "b", "c")]
    merged = records["merge"]
    assert merged["output_tail"].strip().splitlines()[-1].split() == [
        "merged",
        *agent_branches,
        records["agent_a"]["workspace"]["head_commit"],
    ]
    # The three ran side by side, each in its own worktree; the merge step's branch holds all three.
    assert {records[f"agent_{n}"]["workspace"]["changed_files"][0] for n in "abc"} == {"a.md", "b.md", "c.md"}
    assert all(records[f"agent_{n}"]["result"]["answer"] == f"{n} was here" for n in "abc")
    # Side by side: each agent started before any other agent ended.
    ends = min(records[f"agent_{n}"]["finished_at"] for n in "abc")
    assert all(records[f"agent_{n}"]["started_at"] < ends for n in "abc")
    merge_branch = merged["workspace"]["branch"]
    for name in ("a", "b", "c"):
        assert git(repo, "show", f"{merge_branch}:{name}.md") == f"{name} was here\n"
    assert sorted(merged["workspace"]["changed_files"]) == ["a.md", "b.md", "c.md"]
    assert_sound(repo)


async def test_a_harness_step_and_a_retry_reuse_one_worktree(settings, tmp_path):
    repo = make_repo(tmp_path / "repo")
    # Attempt 1 writes its file and fails; attempt 2 finds it there and succeeds.
    code = (
        "import pathlib, sys; p = pathlib.Path('attempts.txt'); "
        "p.write_text(p.read_text() + 'x' if p.exists() else 'x'); sys.exit(0 if p.read_text() == 'xx' else 1)"
    )
    record = await run_isolated(settings, repo, py(code), max_attempts=2)
    assert record["status"] == "succeeded" and record["attempt"] == 2
    assert git(repo, "show", f"{record['workspace']['branch']}:attempts.txt") == "xx"
    assert_sound(repo)


async def test_shutdown_finishes_the_worktrees_of_the_effects_it_cancels(settings, tmp_path):
    repo = make_repo(tmp_path / "repo")
    async with connected(settings) as (_, client):
        effect_id = await start_writing(client, repo, "wip.txt", "work in progress\n")
    async with connected(settings) as (_, client):
        record = await call(client, "poll_effect", effect_id=effect_id)
    assert record["status"] == "cancelled" and record["cancel_reason"] == "shutdown"
    assert git(repo, "show", f"{record['workspace']['branch']}:wip.txt") == "work in progress\n"
    assert_sound(repo)


async def test_after_a_sigkill_of_the_server_recovery_leaves_no_stray_worktree_and_loses_no_work(tmp_path):
    repo = make_repo(tmp_path / "repo")
    db = tmp_path / "journal.db"
    code = WRITE + "; import os, time; print('pids', os.getppid(), os.getpid(), 'written', flush=True); time.sleep(120)"
    pids: list[int] = []
    with suppress(Exception, BaseExceptionGroup):
        async with Client(stdio_params(db, "--allow-any-command"), read_timeout_seconds=70) as client:
            lost = await call(
                client,
                "dispatch_effect",
                command=py(code, "wip.txt", "uncommitted when the server died\n"),
                cwd=str(repo),
                isolation="worktree",
                background=True,
            )
            kept = await call(
                client,
                "dispatch_effect",
                command=py(code, "kept.txt", "in a kept worktree\n"),
                cwd=str(repo),
                isolation="worktree",
                keep_worktree=True,
                background=True,
            )
            for effect in (lost, kept):
                text = await read_until(client, effect["effect_id"], "written")
                pids += [int(p) for p in text.split()[1:3]]
            assert len(worktrees(repo)) == 3  # the main one and the two effects'
            os.kill(pids[0], signal.SIGKILL)  # the server
            with anyio.fail_after(10):
                while any(pid_alive(pid) for pid in pids):  # noqa: ASYNC110 - no event tells when another process dies
                    await anyio.sleep(0.02)
    # The server is gone and its effects with it; their worktrees and their uncommitted work are still there.
    assert len(worktrees(repo)) == 3
    async with Client(stdio_params(db, "--allow-any-command"), read_timeout_seconds=70) as client:
        lost_record = await call(client, "poll_effect", effect_id=lost["effect_id"])
        kept_record = await call(client, "poll_effect", effect_id=kept["effect_id"])
    assert lost_record["status"] == "failed" and lost_record["error"] == "interrupted"
    workspace = lost_record["workspace"]
    assert workspace["changed_files"] == ["wip.txt"] and workspace["branch_kept"] is True
    assert git(repo, "show", f"{workspace['branch']}:wip.txt") == "uncommitted when the server died\n"
    assert workspace["kept"] is False and not exists(workspace["path"])
    assert "interrupted" in git(repo, "log", "-1", "--format=%B", workspace["branch"])
    # The kept one stays, its work committed; no other worktree is left.
    kept_workspace = kept_record["workspace"]
    assert kept_workspace["kept"] is True and is_dir(kept_workspace["path"])
    assert git(repo, "show", f"{kept_workspace['branch']}:kept.txt") == "in a kept worktree\n"
    assert worktrees(repo) == [str(repo), kept_workspace["path"]]
    assert sorted(branches(repo)) == sorted([workspace["branch"], kept_workspace["branch"]])
    assert_fsck(repo)


async def test_a_base_that_vanished_before_the_start_fails_the_effect_with_the_reason(settings, tmp_path):
    repo = make_repo(tmp_path / "repo")
    git(repo, "branch", "short-lived")
    gate = tmp_path / "gate"
    wait = "import pathlib, sys, time\nwhile not pathlib.Path(sys.argv[1]).exists(): time.sleep(0.02)"
    async with connected(settings) as (_, client):
        first = await call(client, "dispatch_effect", command=py(wait, str(gate)), background=True)
        later = await call(
            client,
            "dispatch_effect",
            command=py("print('never')"),
            cwd=str(repo),
            isolation="worktree",
            worktree_base="short-lived",
            depends_on=[first["effect_id"]],
            background=True,
        )
        git(repo, "branch", "-D", "short-lived")  # accepted at dispatch, gone when the effect starts
        gate.touch()
        done = await call(client, "await_group", effect_ids=[later["effect_id"]], timeout_s=30)
    record = done["done"][0]
    assert record["status"] == "failed" and record["workspace"] is None
    assert "could not make the effect's git worktree" in record["error"] and "short-lived" in record["error"]
    assert branches(repo) == [] and worktrees(repo) == [str(repo)]


async def test_changed_files_stop_at_a_thousand_and_say_so(settings, tmp_path):
    repo = make_repo(tmp_path / "repo")
    many = (
        "import pathlib\npathlib.Path('gen').mkdir()\n"
        "for i in range(1001): pathlib.Path(f'gen/{i:04}.txt').write_text('x\\n')"
    )
    record = await run_isolated(settings, repo, py(many), wait_s=50)
    workspace = record["workspace"]
    assert len(workspace["changed_files"]) == 1000 and workspace["changed_files_truncated"] is True
    assert workspace["changed_files"][0] == "gen/0000.txt" and workspace["insertions"] == 1001
    assert len(git(repo, "ls-tree", "-r", "--name-only", workspace["branch"], "gen/").split()) == 1001


async def test_a_waiting_effect_with_a_worktree_cancelled_offline_keeps_its_work(settings, tmp_path):
    repo = make_repo(tmp_path / "repo")
    # Attempt 1 writes and fails; the retry waits a long backoff, and the server stops with --keep-queued.
    code = "import pathlib, sys; pathlib.Path('draft.txt').write_text('first try\\n'); sys.exit(3)"
    async with connected(settings, keep_queued=True) as (_, client):
        record = await call(
            client,
            "dispatch_effect",
            command=py(code),
            cwd=str(repo),
            isolation="worktree",
            max_attempts=2,
            retry_backoff_s=600,
            background=True,
        )
        effect_id = record["effect_id"]
        with anyio.fail_after(20):  # the first attempt failed and the retry waits its backoff
            while True:
                record = await call(client, "poll_effect", effect_id=effect_id)
                if record["attempt"] >= 1 and record["status"] == "queued":
                    break
                await anyio.sleep(0.05)
        assert record["workspace"] is not None and is_dir(record["workspace"]["path"])
    assert await cancel_offline(settings.db, effect_id, "not needed", settings.worktree_dir)
    async with connected(settings) as (_, client):
        record = await call(client, "poll_effect", effect_id=effect_id)
    assert record["status"] == "cancelled"
    workspace = record["workspace"]
    assert workspace["kept"] is False and not exists(workspace["path"]) and workspace["branch_kept"] is True
    assert git(repo, "show", f"{workspace['branch']}:draft.txt") == "first try\n"
    assert_sound(repo)


async def test_a_repository_gone_under_the_effect_still_ends_it_and_leaves_its_files(settings, tmp_path):
    repo = make_repo(tmp_path / "repo")
    wreck = "import pathlib, shutil, sys; pathlib.Path('work.txt').write_text('mine\\n'); shutil.rmtree(sys.argv[1])"
    async with connected(settings) as (_, client):
        record = await call(
            client,
            "dispatch_effect",
            command=py(wreck, str(repo / ".git")),
            cwd=str(repo),
            isolation="worktree",
            wait_s=30,
        )
        assert (await call(client, "dispatch_effect", command=py("print('still serving')"), wait_s=30))[
            "status"
        ] == "succeeded"
    # Nothing could be committed: the directory stays, with the effect's file, and the record says so.
    assert record["status"] == "succeeded"
    assert record["workspace"]["kept"] is True and exists(os.path.join(record["workspace"]["path"], "work.txt"))
