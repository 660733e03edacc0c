"""The SQLite journal: append-only events, a projection kept in step with them, and replay."""

from effectd.journal.projection import (
    EVENT_TYPES,
    JOURNAL_PRUNED,
    OUTPUT_PRUNED,
    QUEUED,
    RETRY,
    TERMINAL_EVENTS,
    EffectState,
    Event,
    fold_effect,
    fold_flow,
    terminal_event,
)
from effectd.journal.reader import JournalReader
from effectd.journal.store import Journal, replay_projection

__all__ = [
    "EVENT_TYPES",
    "JOURNAL_PRUNED",
    "OUTPUT_PRUNED",
    "QUEUED",
    "RETRY",
    "EffectState",
    "TERMINAL_EVENTS",
    "Event",
    "Journal",
    "JournalReader",
    "fold_effect",
    "fold_flow",
    "replay_projection",
    "terminal_event",
]
