"""`benchmarks/bench_live.py` runs, small, and reports every figure for both sides (a smoke run: it
asserts no timing). The full run is in the docs' performance page."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import REPO

pytestmark = pytest.mark.slow


def test_the_live_effects_benchmark_reports_both_sides(tmp_path: Path) -> None:
    out = tmp_path / "live.json"
    argv = [sys.executable, str(REPO / "benchmarks" / "bench_live.py"), "--effects", "20", "--seconds", "1"]
    done = subprocess.run([*argv, "--watched", "3", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    for side in ("effectd", "asyncio"):
        assert figures[side]["effects"] == 20 and figures[side]["dispatch_per_s"] > 0
        assert figures[side]["latencies_ms"], f"{side}: no line was timed"
    assert "effectd's CPU at" in done.stdout
