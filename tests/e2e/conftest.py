"""The end-to-end tier's own settings."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # The real tier (real agent CLIs, npm clients); registered here too, so this tier runs on its own.
    config.addinivalue_line("markers", "real: needs real external programs (agent CLIs, npm clients); run by CI")
