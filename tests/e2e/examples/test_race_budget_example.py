"""client_examples/race_and_budget.py, run as a user runs it: a program judged by what it prints."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import REPO
from tests.helpers.programs import run_program, succeeded


@pytest.mark.slow
def test_the_race_and_budget_example_keeps_the_first_success_and_stops_the_swarm_at_its_budget(
    tmp_path: Path,
) -> None:
    script = REPO / "client_examples" / "race_and_budget.py"
    result, _ = run_program([sys.executable, str(script)], tmp_path, timeout=90)
    out = succeeded(result)
    # The race: the quickest success wins though another failed first; the losers are gone on return.
    assert re.search(r"winner after [\d.]+ s: racer-2 \('racer-2: done'\)", out), out
    assert re.search(r"racer-3\s+failed\s+process gone", out), out
    for loser in ("racer-1", "racer-4"):
        assert re.search(rf"{loser}\s+cancelled \(superseded\)\s+process gone", out), out
    assert "STILL ALIVE" not in out
    # The quorum: the first two approvals decide; the third is stopped.
    assert "approved by ['review-a', 'review-b']; satisfied=True" in out
    assert re.search(r"review-c\s+cancelled\s+superseded", out), out
    # The budget: the three quick workers cross $0.05; the two slow ones are stopped with reason budget.
    for worker in ("worker-1", "worker-2", "worker-3"):
        assert re.search(rf"{worker}\s+succeeded\s+\$0\.02", out), out
    for worker in ("worker-4", "worker-5"):
        assert re.search(rf"{worker}\s+cancelled\s+budget", out), out
    assert "a later dispatch is refused" in out and "$0.0600 spent of max_cost_usd $0.0500" in out
    assert "summary: {'cancelled': 2, 'succeeded': 3}; budget $0.06 spent of $0.05, exceeded=True" in out
    assert not list(tmp_path.glob("effectd-race-*")), "the example removes its temporary journal"
