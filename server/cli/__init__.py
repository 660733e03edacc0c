"""The `effectd` command line: serve, cancel, ls, show, logs, journal, demo (`effectd.cli:main`)."""

from effectd.cli.main import main

__all__ = ["main"]
