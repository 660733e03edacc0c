"""Programs run as a user runs them (the demo, the client examples, the fake harness), judged by what they print."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from effectd.harness import fake
from tests.helpers.paths import REPO


def run_program(argv: list[str], cwd: Path, timeout: float) -> tuple[subprocess.CompletedProcess[str], float]:
    """Runs a program in its own process group with temporary files under `cwd`; kills the group on timeout."""
    env = {**os.environ, "TMPDIR": str(cwd), "NO_COLOR": "1"}
    started = time.monotonic()
    with subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as process:
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            pytest.fail(f"{argv} ran over {timeout} s\n--- stdout\n{out}\n--- stderr\n{err}")
    elapsed = time.monotonic() - started
    return subprocess.CompletedProcess(argv, process.returncode, out, err), elapsed


def succeeded(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    return result.stdout


FAKE = [sys.executable, "-m", "effectd.harness.fake"]


TIMEOUT_S = 20.0


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any FAKE_HARNESS_* setting, plus ``extra``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(fake.ENV_PREFIX)}
    return {**env, **extra}


def run_fake(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FAKE, "--delay", "0", *args],
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=env or clean_env(),
        check=False,
    )


# The fake harness's arguments for a short run (two steps).
QUICK = ["--steps", "2", "--delay", "0.05"]
