"""The flow client example and the flow benchmark, run as programs, judged by what they print."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import REPO


def run(argv: list[str], cwd: Path, timeout: float = 120) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"exit {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_the_plan_fanout_review_example_fans_out_resumes_and_pipes(tmp_path: Path) -> None:
    out = run([sys.executable, str(REPO / "client_examples" / "plan_fanout_review.py"), "--files", "4"], tmp_path)
    assert re.search(r"^  document\s+succeeded\s+fanned out into 4 effects:$", out, re.M), out
    assert len(re.findall(r"^    \[\d\] succeeded ", out, re.M)) == 4, out
    assert re.search(r"^  review\s+failed .*--fail", out, re.M), out
    assert "document's result: 4 results, the first answering 'Done: Write the docs of src/module_0.py" in out
    assert re.search(r"^  plan\s+succeeded\s+cached from eff_\w+$", out, re.M), out
    assert re.search(r"^  document\s+succeeded\s+cached from eff_\w+$", out, re.M), out
    assert "ran again: review" in out and "succeeded, wall" in out
    assert "count printed '8 events'" in out
    piped = re.search(r"emit ([\d.]+) s, count ([\d.]+) s, the flow ([\d.]+) s wall", out)
    assert piped, out
    emit, count, wall = map(float, piped.groups())
    assert wall < 0.85 * (emit + count), out


@pytest.mark.slow
def test_the_flow_benchmark_reports_the_pipe_and_the_fan_out_beside_their_sequential_baselines(tmp_path: Path) -> None:
    out = run(
        [sys.executable, str(REPO / "benchmarks" / "bench_flows.py"), "--layers", "2", "--width", "3",
         "--step-s", "0.1", "--items", "20", "--pipe-s", "0.5"],
        tmp_path,
        timeout=300,
    )  # fmt: skip
    for label in ("a | b piped:", "a then b:", "fan-out of 20 items:", "20 items one at a time:"):
        assert label in out, out
