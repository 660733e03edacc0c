"""The supervisor: schedules, runs, cancels and recovers effects (see `core.py`)."""

from effectd.supervisor.core import Supervisor
from effectd.supervisor.effect import CancelRequest, Effect
from effectd.supervisor.events import Outcome

__all__ = ["CancelRequest", "Effect", "Outcome", "Supervisor"]
