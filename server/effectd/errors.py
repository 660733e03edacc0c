"""The errors effectd raises on purpose: each says what was wrong and what to do."""

from __future__ import annotations

from typing import Any


class EffectdError(Exception):
    """Raised when effectd refuses or cannot do what was asked; the root of every error below."""


class InvalidRequestError(EffectdError):
    """Raised when a request's arguments cannot work; nothing was written or started."""


class NotAllowedError(InvalidRequestError):
    """Raised when a command is not on the allow-list, or a harness profile cannot run."""


class UnknownEffectError(EffectdError):
    """Raised when an effect id, group or flow id names nothing the journal knows."""


class ConflictError(InvalidRequestError):
    """Raised when an idempotency key is reused with different arguments."""


class BudgetExceededError(InvalidRequestError):
    """Raised when a dispatch goes into a run or group whose budget is spent; says what was spent."""


class ConfigError(EffectdError):
    """Raised when the configuration file or the command line holds a value effectd cannot use."""


class DatabaseBusyError(EffectdError):
    """Raised when the journal is busy: its start-up lock is held too long, or a live server runs the effect."""


class PeerUnansweredError(EffectdError):
    """Raised when the server that runs an effect does not answer a forwarded cancel in time; it was withdrawn."""


class JournalUnavailableError(EffectdError):
    """Raised when a call needs to write but the journal takes no writes now (disk full, locked, I/O error)."""


class JournalUnusableError(EffectdError):
    """Raised when the journal file cannot be used at all (corrupt, truncated, unreadable, read-only, newer)."""


class EffectFailedError(EffectdError):
    """Raised by the Python API when an awaited effect ended `failed` or `skipped`; carries its record."""

    def __init__(self, record: Any) -> None:
        self.record = record
        status = getattr(record, "status", "failed")
        why = getattr(record, "error", None) or f"exit code {getattr(record, 'exit_code', None)}"
        super().__init__(f"effect {getattr(record, 'effect_id', '?')} {status}: {why}")


class EffectCancelledError(EffectdError):
    """Raised by the Python API when an awaited effect was cancelled; carries the reason and the record."""

    def __init__(self, record: Any) -> None:
        self.record = record
        self.cancel_reason: str | None = getattr(record, "cancel_reason", None)
        self.cancel_message: str | None = getattr(record, "cancel_message", None)
        detail = f": {self.cancel_message}" if self.cancel_message else ""
        super().__init__(f"effect {getattr(record, 'effect_id', '?')} cancelled ({self.cancel_reason}){detail}")
