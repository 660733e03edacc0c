"""The fake harness speaks Claude Code's stream-json, so the claude parser reads it like the real CLI."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from effectd.harness import fake
from effectd.harness.parsers import MISSING_FINAL_EVENT, HarnessOutcome, Parser, make_parser
from effectd.harness.profiles import BUILTIN_PROFILES, HarnessProfile
from tests.helpers.paths import REPO
from tests.helpers.programs import FAKE, TIMEOUT_S, clean_env, run_fake


def parse(stdout: str) -> tuple[Parser, HarnessOutcome]:
    parser = make_parser("claude")
    for line in stdout.split("\n"):
        parser.feed(line)
    return parser, parser.outcome(0)


def events(stdout: str) -> list[dict[str, Any]]:
    found = []
    for line in stdout.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            found.append(event)
    return found


def read_lines_until(proc: subprocess.Popen[bytes], stop: Callable[[str], bool]) -> list[str]:
    """Lines from ``proc``'s stdout as they arrive, up to the first one ``stop`` accepts (bounded wait)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + TIMEOUT_S
    buffer = b""
    lines: list[str] = []
    while True:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"no line accepted within {TIMEOUT_S} s; got {lines}"
        chunk = os.read(fd, 65536)
        assert chunk, f"output ended before the line we wait for; got {lines}"
        *complete, buffer = (buffer + chunk).split(b"\n")
        for raw in complete:
            lines.append(raw.decode())
            if stop(lines[-1]):
                return lines


def is_result(line: str) -> bool:
    return line.startswith('{"type":"result"')


@pytest.fixture
def popen_fake() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Starts the fake in its own process group; kills the whole group at the end of the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [*FAKE, "--delay", "0", *args],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env=clean_env(),
            start_new_session=True,
            bufsize=0,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=TIMEOUT_S)
        assert proc.stdout is not None
        proc.stdout.close()


def test_claude_parser_reads_the_fake_answer_cost_turns_and_tool_calls() -> None:
    completed = run_fake("--steps", "3", "--cost", "0.25", "--answer", "All tests pass.", "check the tests")
    parser, outcome = parse(completed.stdout)
    assert completed.returncode == 0
    assert outcome.error is None
    assert outcome.result is not None
    init = events(completed.stdout)[0]
    assert init["type"] == "system"
    assert outcome.result["answer"] == "All tests pass."
    assert outcome.result["cost_usd"] == 0.25
    assert outcome.result["turns"] == 3
    assert outcome.result["session_id"] == init["session_id"]
    assert outcome.result["subtype"] == "success"
    assert {"input_tokens", "output_tokens"} <= set(outcome.result["usage"])
    assert parser.progress.turns == 3
    assert parser.progress.tool_calls == 2
    assert parser.progress.last_text == "All tests pass."


def test_the_fake_prints_every_claude_event_kind_and_ends_with_result() -> None:
    kinds = [event["type"] for event in events(run_fake("--steps", "2", "x").stdout)]
    assert kinds == ["system", "assistant", "assistant", "user", "assistant", "result"]


def test_the_default_answer_is_derived_from_the_prompt() -> None:
    _, outcome = parse(run_fake("--steps", "1", "rename the module").stdout)
    assert outcome.result is not None
    assert outcome.result["answer"] == "Done: rename the module"


def test_fail_gives_an_error_result_and_exit_status_one() -> None:
    completed = run_fake("--fail", "break it")
    _, outcome = parse(completed.stdout)
    assert completed.returncode == 1
    assert outcome.error is not None
    assert outcome.error.startswith("error_during_execution: ")
    assert outcome.result is not None
    assert outcome.result["is_error"] is True
    assert outcome.result["errors"]


def test_no_result_exits_zero_but_the_run_did_not_succeed() -> None:
    completed = run_fake("--no-result", "stop early")
    parser, outcome = parse(completed.stdout)
    assert completed.returncode == 0
    assert not parser.finished
    assert outcome.error == MISSING_FINAL_EVENT


def test_exit_code_sets_the_exit_status() -> None:
    completed = run_fake("--exit-code", "3", "x")
    assert completed.returncode == 3
    assert parse(completed.stdout)[1].error is None


def test_garbage_lines_do_not_break_the_parser() -> None:
    completed = run_fake("--garbage", "--steps", "2", "--answer", "ok", "x")
    assert any(not line.startswith("{") for line in completed.stdout.splitlines())
    parser, outcome = parse(completed.stdout)
    assert outcome.error is None
    assert outcome.result is not None
    assert outcome.result["answer"] == "ok"
    assert parser.progress.turns == 2


def test_environment_variables_configure_the_fake() -> None:
    env = clean_env(FAKE_HARNESS_STEPS="2", FAKE_HARNESS_ANSWER="from env", FAKE_HARNESS_FAIL="1")
    completed = run_fake("x", env=env)
    _, outcome = parse(completed.stdout)
    assert completed.returncode == 1
    assert outcome.result is not None
    assert (outcome.result["turns"], outcome.error is not None) == (2, True)


def test_a_command_line_option_wins_over_its_environment_variable() -> None:
    completed = run_fake("--steps", "1", "x", env=clean_env(FAKE_HARNESS_STEPS="4"))
    parser, outcome = parse(completed.stdout)
    assert outcome.result is not None
    assert (outcome.result["turns"], parser.progress.turns) == (1, 1)


def test_a_bad_environment_value_is_a_usage_error() -> None:
    completed = run_fake("x", env=clean_env(FAKE_HARNESS_STEPS="many"))
    assert completed.returncode == 2
    assert "'many' is not a whole number" in completed.stderr


@pytest.mark.parametrize("prompt_args", [["-"], []])
def test_the_prompt_is_read_from_stdin_when_it_is_dash_or_absent(prompt_args: list[str]) -> None:
    completed = run_fake("--steps", "1", *prompt_args, stdin="prompt from stdin\n")
    _, outcome = parse(completed.stdout)
    assert outcome.result is not None
    assert outcome.result["answer"] == "Done: prompt from stdin"


def test_the_fake_runs_under_the_claude_profile_command_template() -> None:
    claude = BUILTIN_PROFILES["claude"]
    profile = HarnessProfile(name="fake", command=(*FAKE, *claude.command[1:]), parser="claude")
    argv = profile.build_argv('say "hi" {args}', ["--model", "sonnet", "--delay", "0", "--steps", "1"])
    completed = subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S, env=clean_env(), check=False
    )
    _, outcome = parse(completed.stdout)
    assert completed.returncode == 0, completed.stderr
    assert outcome.result is not None
    assert outcome.result["answer"] == 'Done: say "hi" {args}'


def test_main_can_be_called_in_process(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(fake.ENV_PREFIX):
            monkeypatch.delenv(name)
    assert fake.main(["--delay", "0", "--steps", "2", "--cost", "0.5", "hello"]) == 0
    _, outcome = parse(capsys.readouterr().out)
    assert outcome.result is not None
    assert (outcome.result["answer"], outcome.result["cost_usd"]) == ("Done: hello", 0.5)


def test_each_line_is_flushed_as_it_is_written(popen_fake: Callable[..., subprocess.Popen[bytes]]) -> None:
    proc = popen_fake("--hang-after-result", "x")
    lines = read_lines_until(proc, is_result)
    assert json.loads(lines[0])["type"] == "system"
    assert proc.poll() is None  # still running: the lines arrived before exit, so they were flushed


def test_hang_after_result_keeps_running_after_the_result_line(
    popen_fake: Callable[..., subprocess.Popen[bytes]],
) -> None:
    proc = popen_fake("--hang-after-result", "x")
    read_lines_until(proc, is_result)
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.3)


def test_sigterm_ends_the_fake(popen_fake: Callable[..., subprocess.Popen[bytes]]) -> None:
    proc = popen_fake("--hang-after-result", "x")
    read_lines_until(proc, is_result)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=TIMEOUT_S) == -signal.SIGTERM


def test_ignore_sigterm_survives_sigterm(popen_fake: Callable[..., subprocess.Popen[bytes]]) -> None:
    proc = popen_fake("--hang-after-result", "--ignore-sigterm", "x")
    read_lines_until(proc, is_result)
    proc.send_signal(signal.SIGTERM)
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.3)
    proc.kill()
    assert proc.wait(timeout=TIMEOUT_S) == -signal.SIGKILL


def test_grandchild_runs_in_the_fake_process_group_and_its_pid_is_printed(
    popen_fake: Callable[..., subprocess.Popen[bytes]],
) -> None:
    proc = popen_fake("--grandchild", "--steps", "1", "x")
    lines = read_lines_until(proc, lambda line: "grandchild pid" in line)
    match = re.search(r"grandchild pid (\d+)", lines[-1])
    assert match is not None
    pid = int(match.group(1))
    pidfd = os.pidfd_open(pid)
    try:
        assert os.getpgid(pid) == proc.pid
        deadline = time.monotonic() + TIMEOUT_S  # the grandchild may not have exec'd python yet
        while "time.sleep(600)" not in Path(f"/proc/{pid}/cmdline").read_text() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "time.sleep(600)" in Path(f"/proc/{pid}/cmdline").read_text()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        ready, _, _ = select.select([pidfd], [], [], TIMEOUT_S)
        os.close(pidfd)
    assert ready, "the grandchild outlived SIGKILL to its group"
