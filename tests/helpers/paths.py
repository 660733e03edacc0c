"""Where things are: the repository, the tests, and the files the tests read."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
FIXTURES = TESTS / "fixtures"
"""Recorded streams: ``harness/`` (copies of shared/fixtures/harness) and ``real/`` (from the real CLIs)."""
