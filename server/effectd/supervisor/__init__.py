"""The supervisor: schedules, runs, cancels and recovers effects (see `core.py`)."""
