"""`effectd demo` and the client examples, run as a user runs them: as programs, judged by what they print."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from effectd.config.settings import build_settings, load_file
from effectd.demo import kit as demo_kit
from effectd.demo import main as demo
from tests.helpers.paths import REPO
from tests.helpers.processes import effectd_bin, pid_alive
from tests.helpers.programs import run_program, succeeded

# --- effectd demo ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_fast_demo_shows_effects_side_by_side_streamed_collected_and_a_runaway_killed(tmp_path: Path) -> None:
    result, elapsed = run_program([effectd_bin(), "demo", "--fast"], tmp_path, timeout=60)
    out = succeeded(result)
    # 25 s, not 20, since section 6 (isolation: four sub-agents, some thirty git commands) was added.
    assert elapsed < 25, f"the fast demo took {elapsed:.1f} s"
    assert "\033[" not in out, "no colour when stdout is not a terminal"

    # 1. side by side: all four run at once, and the wall time is well under the sum of the durations
    assert re.search(r"running at once: lint \(pid \d+\), unit-tests \(pid \d+\), agent-docs", out), out
    speed = re.search(
        r"side by side: 4 effects took ([\d.]+) s of wall time for ([\d.]+) s of work.*speedup ([\d.]+)x", out
    )
    assert speed, out
    wall, work, speedup = map(float, speed.groups())
    assert wall < work and speedup > 1.5, speed.group(0)

    # 2. output streamed with each effect's label, commands and condensed sub-agent events
    assert re.search(r"^\s+lint\s+\| checked 1/5 modules$", out, re.M), out
    assert re.search(r"^\s+unit-tests\s+\| passed 10 of 70 tests$", out, re.M), out
    assert re.search(r"^\s+agent-docs\s+\| says: Step 1/2: working on ", out, re.M), out
    assert re.search(r"^\s+agent-review\s+\| final `result` event \(success\)$", out, re.M), out

    # 3. each completion once, after its own output, with results, answers and costs
    for label in ("lint", "unit-tests", "agent-docs", "agent-review"):
        done = re.findall(rf"^\s+{label}\s+done: succeeded in [\d.]+ s(.*)$", out, re.M)
        assert len(done) == 1, (label, out)
        last_line = out.rindex(f"{label:<12} | ")
        assert last_line < out.index(f"{label:<12} done:"), f"{label}: output after its completion\n{out}"
    assert re.search(r'agent-docs\s+done: .*answer "effectd runs commands.*", cost \$0\.0123', out), out
    assert re.search(r'lint\s+done: .*result \{"warnings": 0\}', out), out
    assert "sub-agent cost $0.0210" in out

    # 4. the runaway is cancelled by the user and both its processes are gone
    pids = re.search(r"runaway\s+\| pid (\d+) ignores SIGTERM; grandchild pid (\d+)", out)
    assert pids, out
    assert re.search(r"status cancelled, cancel_reason user, signal 9 \(SIGKILL\)", out), out
    for pid in pids.groups():
        assert f"pid {pid:<8} " in out and f"gone (no live /proc/{pid})" in out, out
        assert not pid_alive(int(pid))

    # 5. the diamond flow, when the server has flows: lint and test side by side, report after both
    flow = "== 5. A diamond flow" in out
    if flow:
        steps = {
            m[0]: (float(m[1]), float(m[2]))
            for m in re.findall(
                r"^\s+(fetch|lint|test|report)\s+\S+(?:, \S+)?\s+\+([\d.]+) s\s+([\d.]+) s\s+succeeded", out, re.M
            )
        }
        assert set(steps) == {"fetch", "lint", "test", "report"}, out
        end = {name: start + took for name, (start, took) in steps.items()}
        assert steps["lint"][0] >= end["fetch"] - 0.05 and steps["test"][0] >= end["fetch"] - 0.05, out
        assert steps["test"][0] < end["lint"] and steps["lint"][0] < end["test"], "lint and test overlap"
        assert steps["report"][0] >= max(end["lint"], end["test"]) - 0.05, out
        assert "report step printed: 'report: lint clean (3 files changed); tests pass (3 files changed)'" in out
        assert "progress notification: 4/4 steps ended" in out

    # 6. isolation: three agents edit one file, each on its own branch; the reader leaves no branch; no worktree left
    for name in ("ada", "bob", "cy"):
        assert re.search(rf"^\s+agent-{name}\s+succeeded, branch effectd/eff_\w+: NOTES.md \(\+1 -0\)$", out, re.M), out
    assert re.search(r"^\s+agent-reader\s+succeeded, changed nothing: its branch was deleted$", out, re.M), out
    assert "3 branches; git worktree list: 1 (main only)" in out and "NOTES.md is untouched" in out
    worktrees = re.search(r"^\s+(\S*effectd) worktrees --db (\S+)$", out, re.M)
    assert worktrees, out
    listed = succeeded(
        subprocess.run(
            [*worktrees.groups()[:1], "worktrees", "--db", worktrees.group(2)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    )
    assert len(re.findall(r"effectd/eff_\w+", listed)) == 4 and listed.count(" deleted ") == 1, listed

    # 7. plan -> fan-out -> review (failing on purpose), then resumed: only the review runs again
    if flow:
        fanned = r"^\s+document\s+succeeded [\d.]+ s, 4 sub-agents side by side \([\d.]+ s of work\)$"
        assert re.search(fanned, out, re.M), out
        assert re.search(r"^\s+review\s+failed .*fake harness failed as asked", out, re.M), out
        assert re.search(r"^\s+document\s+succeeded cached \(taken from the first run\)$", out, re.M), out
        assert "resumed: 2 steps cached, only the review ran again" in out

    # 8. the journal is kept and the printed commands work
    assert "effectd demo OK" in out
    commands: dict[str, str] = {}
    for subcommand, rest in re.findall(r"^\s+\S*effectd (ls|logs|journal|show) (.*)$", out, re.M):
        commands.setdefault(subcommand, rest)  # the first `show` is of an effect, a second one of the flow
    assert set(commands) == {"ls", "logs", "show", "journal"}, out
    found = re.search(r"^\s+(\S*effectd) ls ", out, re.M)
    assert found, out
    effectd = found.group(1)

    def printed(subcommand: str, *extra: str) -> str:
        argv = [effectd, subcommand, *shlex.split(commands[subcommand]), *extra]
        return succeeded(subprocess.run(argv, capture_output=True, text=True, timeout=30))

    db = Path(commands["ls"].split()[-1])
    assert db.is_file() and db.is_relative_to(tmp_path)
    listing = printed("ls")
    # effects: 5 (sections 1-4), 4 (the diamond flow), 4 (isolation), 7 + 3 (the agent flow and its resume)
    assert len(listing.splitlines()) == 1 + (9 + 10 if flow else 5) + 4 and "runaway" in listing, listing
    assert printed("logs").splitlines() == [f"checked {n}/5 modules" for n in range(1, 6)]
    assert '"kind": "harness"' in printed("show")
    assert "EFFECT_CANCELLED" in printed("journal")
    if flow:
        flow_id = re.search(r"effectd show (flw_\w+) --db", out)
        assert flow_id, out
        shown = succeeded(
            subprocess.run(
                [effectd, "show", flow_id.group(1), "--db", str(db)], capture_output=True, text=True, timeout=30
            )
        )
        assert '"status": "succeeded"' in shown


def test_the_demo_configuration_allows_python_and_runs_the_fake_harness_from_any_directory(tmp_path: Path) -> None:
    settings = build_settings(load_file(demo.write_config(tmp_path)), db=tmp_path / "journal.db")
    assert sys.executable in settings.allow_commands
    profile = settings.harnesses[demo_kit.HARNESS]
    assert profile.parser == "claude" and profile.resolve_executable() is not None
    argv = profile.build_argv("hello", ["--delay", "0", "--steps", "1"])
    ran = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=30, env={"PATH": os.defpath})
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines()[-1].startswith('{"type":"result","subtype":"success"')


def test_the_demo_condenses_stream_json_for_the_terminal() -> None:
    assert demo_kit.agent_line('{"type":"system","subtype":"init","model":"m"}') == "session started (model m)"
    text = '{"type":"assistant","message":{"content":[{"type":"text","text":"hi"}]}}'
    assert demo_kit.agent_line(text) == "says: hi"
    tool = '{"type":"assistant","message":{"content":[{"type":"tool_use","name":"Bash","input":{"command":"ls"}}]}}'
    assert demo_kit.agent_line(tool) == "calls Bash: ls"
    assert demo_kit.agent_line('{"type":"user","message":{}}') is None
    assert demo_kit.agent_line("not json") == "not json"


def test_the_demo_fails_with_a_clear_message_when_the_server_cannot_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(demo, "effectd_command", lambda: [str(tmp_path / "no-such-effectd")])
    assert demo.main(fast=True) == 1
    err = capsys.readouterr().err
    assert "effectd demo FAILED" in err and "no-such-effectd" in err
    assert "journal and output kept in" in err


# --- client examples -----------------------------------------------------------------------------


def test_the_quickstart_example_runs_foreground_background_poll_and_cancel(tmp_path: Path) -> None:
    result, _ = run_program([sys.executable, str(REPO / "client_examples" / "quickstart.py")], tmp_path, timeout=60)
    out = succeeded(result)
    assert re.search(r"progress \(\d+ bytes so far\): counting \d/5", out), out
    assert "-> succeeded, exit code 0" in out
    assert "[etl] fetching" in out and "[etl] writing" in out
    assert 'poll_effect: succeeded, result {"rows": 42}' in out
    assert "-> cancelled (cancel_reason user, message 'not needed')" in out
    assert "is_error=True" in out and "--allow-command rm" in out
    assert not list(tmp_path.glob("effectd-quickstart-*")), "the example removes its temporary journal"


@pytest.mark.slow
def test_the_parallel_subagents_example_takes_five_results_as_they_complete(tmp_path: Path) -> None:
    script = REPO / "client_examples" / "parallel_subagents.py"
    result, _ = run_program([sys.executable, str(script)], tmp_path, timeout=60)
    out = succeeded(result)
    order = re.findall(r"^\s+\[(\d)/5\] \+\s*[\d.]+ s\s+(\S+)\s+succeeded", out, re.M)
    assert [n for n, _ in order] == ["1", "2", "3", "4", "5"], out
    assert sorted(label for _, label in order) == ["docs", "review-cli", "review-journal", "triage", "write-tests"]
    assert order[0][1] == "docs" and order[-1][1] == "write-tests", "the quickest first, the slowest last"
    assert "{'succeeded': 5}, total cost $0.0562" in out


def test_the_worktree_subagents_example_keeps_each_agents_edit_on_its_own_branch(tmp_path: Path) -> None:
    script = REPO / "client_examples" / "worktree_subagents.py"
    result, _ = run_program([sys.executable, str(script), "--agents", "3", "--mode", "all"], tmp_path, timeout=60)
    out = succeeded(result)
    done = re.findall(
        r"^\s+agent-(\d): succeeded, branch (effectd/eff_\w+) \(IDEAS.md: \+1 -0\), worktree kept", out, re.M
    )
    assert sorted(n for n, _ in done) == ["1", "2", "3"], out
    for number, branch in done:
        assert re.search(rf"^\s+{branch}: - .* \(agent-{number}\)$", out, re.M), out
    assert "main's IDEAS.md is untouched: True" in out and "git worktree list: 4 (main and 3 kept)" in out
    assert out.count(" pruned ") == 3 and "after --prune: git worktree list: 1; effectd/* branches: 3" in out


def test_the_approvals_example_answers_its_sub_agents_from_await_group(tmp_path: Path) -> None:
    result, _ = run_program([sys.executable, str(REPO / "client_examples" / "approvals.py")], tmp_path, timeout=120)
    out = succeeded(result)
    assert "note    written" in out and "code    written" in out and "escape  not written" in out, out
    assert "flow succeeded, released: True" in out
    assert "Write  allowed  by rule" in out and "Write  denied   by client" in out
    assert "start  allowed  by client" in out
