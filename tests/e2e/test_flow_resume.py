"""Resume: a flow run again with `resume: OLD` takes every unchanged succeeded step from OLD."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from effectd.api import run_flow
from effectd.config.settings import Settings
from effectd.harness.profiles import HarnessProfile
from tests.helpers.git import git, make_repo
from tests.helpers.mcp import call, call_error, connected, open_engine
from tests.helpers.processes import effectd_bin, py, stdio_params

pytestmark = pytest.mark.anyio

FAKE = [sys.executable, "-m", "effectd.harness.fake", "--delay", "0", "--steps", "1"]
# The fake Claude Code, failing (--fail) while the file named by $BLOCKER exists: the "cause" to fix.
GATED = [
    "sh",
    "-c",
    'if [ -e "$BLOCKER" ]; then set -- --fail "$@"; fi; '
    'exec "$PYTHON" -m effectd.harness.fake --delay 0 --steps 1 "$@"',
    "gated",
    "{prompt}",
]
PLAN = py(
    "import json, os; print('planned two files', flush=True); "
    "json.dump({'files': ['a.py', 'b.py']}, open(os.environ['EFFECTD_RESULT_FILE'], 'w'))"
)
SHOW = "import sys, json; print(json.dumps(sys.argv[1:]))"
EXIT_IF = "import os, sys; sys.exit(os.path.exists(sys.argv[1]))"  # fails while the file exists


@pytest.fixture
def settings(settings: Settings) -> Settings:
    fake = HarnessProfile(name="fake", command=(*FAKE, "{prompt}"), parser="claude")
    gated = HarnessProfile(name="gated", command=tuple(GATED), parser="claude")
    return replace(settings, harnesses={**settings.harnesses, "fake": fake, "gated": gated})


def by_id(flow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["step_id"]: step for step in flow["steps"]}


def agent_flow(blocker: Path) -> list[dict[str, Any]]:
    """plan -> build (fails while `blocker` exists) -> review; lint beside them."""
    env = {"BLOCKER": str(blocker), "PYTHON": sys.executable}
    return [
        {"id": "plan", "command": PLAN},
        {"id": "lint", "harness": "fake", "prompt": "lint the tree"},
        {"id": "build", "harness": "gated", "env": env, "needs": ["plan"], "prompt": "build {{steps.plan.result}}"},
        {"id": "review", "harness": "fake", "needs": ["build", "plan"], "prompt": "review {{steps.plan.output}}"},
    ]


async def effect(client: Client, effect_id: str) -> dict[str, Any]:
    return dict(await call(client, "poll_effect", effect_id=effect_id))


async def output(client: Client, effect_id: str) -> str:
    return str((await call(client, "stream_effect", effect_id=effect_id))["data"])


async def test_a_resume_after_the_cause_is_fixed_runs_only_the_failed_step_and_its_dependents(
    client: Client, settings: Settings, tmp_path: Path
):
    blocker = tmp_path / "blocker"
    blocker.write_text("broken")
    old = await call(client, "dispatch_flow", steps=agent_flow(blocker), policy="continue")
    assert old["status"] == "failed"
    assert {k: s["status"] for k, s in by_id(old).items()} == {
        "plan": "succeeded",
        "lint": "succeeded",
        "build": "failed",
        "review": "skipped",
    }
    blocker.unlink()  # the cause fixed
    new = await call(client, "dispatch_flow", steps=agent_flow(blocker), policy="continue", resume=old["flow_id"])
    assert new["status"] == "succeeded"
    assert new["resumed_from"] == old["flow_id"] and new["cached_steps"] == 2
    steps, before = by_id(new), by_id(old)
    assert {k: s["cached"] for k, s in steps.items()} == {"plan": True, "lint": True, "build": False, "review": False}
    for step_id in ("plan", "lint"):
        taken = await effect(client, steps[step_id]["effect_id"])
        ran = await effect(client, before[step_id]["effect_id"])
        assert taken["status"] == "succeeded" and taken["cached"] is True
        assert taken["reused_from"] == ran["effect_id"] == steps[step_id]["reused_from"]
        assert taken["started_at"] is None and taken["pid"] is None  # no process ran
        assert taken["result"] == ran["result"] and taken["output_tail"] == ran["output_tail"]
        assert await output(client, taken["effect_id"]) == await output(client, ran["effect_id"])
    for step_id in ("build", "review"):
        ran = await effect(client, steps[step_id]["effect_id"])
        assert ran["cached"] is False and ran["reused_from"] is None and ran["started_at"] is not None
    # The cached plan's result and output filled the templates of the steps that ran.
    build = await effect(client, steps["build"]["effect_id"])
    assert 'build {"files": ["a.py", "b.py"]}' in build["command"]
    review = await effect(client, steps["review"]["effect_id"])
    assert "review planned two files" in review["command"]
    # The output is stored once: the cached step's log is the old effect's file.
    logs = settings.output_dir
    plan_new, plan_old = steps["plan"]["effect_id"], before["plan"]["effect_id"]
    assert os.stat(logs / f"{plan_new}.log").st_ino == os.stat(logs / f"{plan_old}.log").st_ino


async def test_a_step_whose_upstream_changed_runs_again_and_so_do_its_dependents(client: Client):
    def steps(word: str) -> list[dict[str, Any]]:
        return [
            {"id": "a", "command": py("import sys; print(sys.argv[1])", word)},
            {"id": "b", "needs": ["a"], "command": py(SHOW, "{{steps.a.output}}")},
            {"id": "c", "needs": ["b"], "command": py(SHOW, "after b")},
            {"id": "d", "command": py(SHOW, "alone")},
        ]

    old = await call(client, "dispatch_flow", steps=steps("one"))
    assert old["status"] == "succeeded"
    same = await call(client, "dispatch_flow", steps=steps("one"), resume=old["flow_id"])
    assert same["cached_steps"] == 4 and same["status"] == "succeeded"
    changed = await call(client, "dispatch_flow", steps=steps("two"), resume=same["flow_id"])
    cached = {k: s["cached"] for k, s in by_id(changed).items()}
    assert cached == {"a": False, "b": False, "c": False, "d": True}
    b = by_id(changed)["b"]["effect_id"]
    assert json.loads(await output(client, b)) == ["two"]
    # A chain of resumes names the effect that ran, not the cached one in between.
    assert by_id(changed)["d"]["reused_from"] == by_id(old)["d"]["effect_id"]


async def test_resuming_an_unknown_flow_is_a_tool_error_that_writes_nothing(client: Client, settings: Settings):
    message = await call_error(client, "dispatch_flow", steps=[{"id": "a", "command": py("")}], resume="flw_nope")
    assert "flw_nope" in message and "unknown flow" in message
    flows = await call(client, "list_effects")
    assert flows["effects"] == []


async def test_resume_works_after_a_server_restart_and_through_the_python_api(settings: Settings, tmp_path: Path):
    blocker = tmp_path / "blocker"
    blocker.write_text("broken")
    async with open_engine(settings) as engine:
        old = await run_flow(engine, agent_flow(blocker))
    assert old.status == "failed"
    blocker.unlink()
    async with open_engine(settings) as engine:  # a new server on the same journal
        with pytest.raises(Exception, match="unknown flow"):
            await run_flow(engine, agent_flow(blocker), resume="flw_missing")
        new = await run_flow(engine, agent_flow(blocker), resume=old.flow_id)
    assert new.status == "succeeded" and new.cached_steps >= 1
    taken = {s.step_id for s in new.steps if s.cached}
    assert "plan" in taken and "build" not in taken and "review" not in taken
    async with connected(settings) as (_, client):  # and a third server reads the cached step back
        plan = next(s for s in new.steps if s.step_id == "plan")
        assert (await effect(client, plan.effect_id))["cached"] is True
        assert "planned two files" in await output(client, plan.effect_id)
    shown = await anyio.run_process([effectd_bin(), "show", new.flow_id, "--db", str(settings.db)], check=True)
    steps = {step["step_id"]: step for step in json.loads(shown.stdout.decode())["steps"]}
    assert steps["plan"]["cached"] is True and steps["plan"]["reused_from"] == plan.reused_from
    assert steps["build"]["cached"] is False and steps["build"]["status"] == "succeeded"


async def test_a_resumed_isolated_step_names_the_old_branch(settings: Settings, tmp_path: Path):
    repo = make_repo(tmp_path / "repo")
    write = py("open('made.txt', 'w').write('x')")
    steps = [
        {"id": "edit", "command": write, "cwd": str(repo), "isolation": "worktree"},
        {"id": "check", "needs": ["edit"], "command": py(SHOW, "{{steps.edit.workspace.branch}}")},
        {"id": "fail", "needs": ["check"], "command": py(EXIT_IF, str(tmp_path / "x"))},
    ]
    (tmp_path / "x").write_text("")
    async with connected(settings) as (_, client):
        old = await call(client, "dispatch_flow", steps=steps)
        assert by_id(old)["edit"]["status"] == "succeeded" and old["status"] == "failed"
        (tmp_path / "x").unlink()
        new = await call(client, "dispatch_flow", steps=steps, resume=old["flow_id"])
        assert new["status"] == "succeeded"
        old_edit = await effect(client, by_id(old)["edit"]["effect_id"])
        new_edit = await effect(client, by_id(new)["edit"]["effect_id"])
        assert new_edit["cached"] is True
        assert new_edit["workspace"]["branch"] == old_edit["workspace"]["branch"]
        assert new_edit["workspace"]["branch"] in git(repo, "branch", "--list")
        check = by_id(new)["check"]
        assert check["cached"] is True
        assert json.loads(await output(client, check["effect_id"])) == [old_edit["workspace"]["branch"]]


async def test_resume_over_stdio(tmp_path: Path):
    gate = tmp_path / "gate"
    gate.write_text("")
    steps = [
        {"id": "a", "command": py("print('alpha')")},
        {"id": "b", "needs": ["a"], "command": py(EXIT_IF, str(gate))},
    ]
    async with Client(stdio_params(tmp_path / "journal.db", "--allow-any-command"), read_timeout_seconds=70) as c:
        old = await call(c, "dispatch_flow", steps=steps)
        assert old["status"] == "failed"
        gate.unlink()
        new = await call(c, "dispatch_flow", steps=steps, resume=old["flow_id"])
        assert new["status"] == "succeeded" and new["cached_steps"] == 1
        assert by_id(new)["a"]["reused_from"] == by_id(old)["a"]["effect_id"]


async def test_a_resume_after_effectd_prune_runs_again_what_lost_its_output_over_stdio(tmp_path: Path):
    """Issue 24: a step whose output `effectd prune` removed ran as "cached" with '' for its output."""
    db = tmp_path / "journal.db"

    def steps(*extra: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            {"id": "a", "command": py("print('alpha')")},
            {"id": "b", "needs": ["a"], "command": py(SHOW, "b got {{steps.a.output}}")},
            *extra,
        ]

    async with Client(stdio_params(db, "--allow-any-command"), read_timeout_seconds=70) as c:
        old = await call(c, "dispatch_flow", steps=steps())
        assert old["status"] == "succeeded"
        b_old = await effect(c, by_id(old)["b"]["effect_id"])
        assert b_old["command"][-1] == "b got alpha"
        pruned = await anyio.run_process([effectd_bin(), "prune", "--older-than", "0s", "--db", str(db)], check=True)
        assert json.loads(pruned.stdout)["effects_pruned"] == 2
        c_step = {"id": "c", "needs": ["a"], "command": py(SHOW, "c got {{steps.a.output}}")}
        new = await call(c, "dispatch_flow", steps=steps(c_step), resume=old["flow_id"])
        assert new["status"] == "succeeded"
        # a's output is gone: a runs again, and so do the steps that read it.
        assert {k: s["cached"] for k, s in by_id(new).items()} == {"a": False, "b": False, "c": False}
        assert json.loads(await output(c, by_id(new)["c"]["effect_id"])) == ["c got alpha"]
        b_new = await effect(c, by_id(new)["b"]["effect_id"])
        assert b_new["command"][-1] == "b got alpha" and b_new["output_pruned"] is False
        # Resumed once more, nothing pruned: all cached, each record's command the argv that ran.
        again = await call(c, "dispatch_flow", steps=steps(c_step), resume=new["flow_id"])
        assert again["cached_steps"] == 3
        for step_id in ("a", "b", "c"):
            taken = await effect(c, by_id(again)[step_id]["effect_id"])
            ran = await effect(c, by_id(new)[step_id]["effect_id"])
            assert taken["cached"] is True and taken["command"] == ran["command"]
            assert taken["output_bytes"] == ran["output_bytes"] > 0 and taken["output_pruned"] is False
        # Pruning the cached records makes them say so.
        await anyio.run_process([effectd_bin(), "prune", "--older-than", "0s", "--db", str(db)], check=True)
        taken = await effect(c, by_id(again)["a"]["effect_id"])
        assert taken["output_pruned"] is True and taken["output_bytes"] == 0
