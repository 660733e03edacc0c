"""The `effectd` command line: serve, cancel, ls, show, logs, journal, demo (`effectd.cli:main`)."""
