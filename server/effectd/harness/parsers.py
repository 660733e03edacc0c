"""Parsers that turn a harness CLI's stdout, line by line, into progress and a final outcome.

Each JSON parser reads one CLI's streaming JSON mode (see the fixture README in
``shared/fixtures/harness``). Parsers never raise on odd input: lines that are
not JSON objects, unknown event types and fields of the wrong type are ignored.
Cost and token figures go through ``usage.UsageCheck``: a bogus one is refused, and named in
``usage_refused`` on the result and the progress.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from effectd.harness.usage import UsageCheck, usage_tokens

MISSING_FINAL_EVENT = "harness exited without its final result event"
"""The error of a run whose CLI never printed its final event (killed, or exited early)."""

TEXT_LIMIT = 500
"""Characters of assistant text kept in ``HarnessProgress.last_text``."""


@dataclass
class HarnessProgress:
    """What a running harness has done so far."""

    last_text: str | None = None
    tool_calls: int = 0
    turns: int = 0

    def to_json(self) -> dict[str, Any]:
        """The progress as a JSON-ready dict."""
        return {"last_text": self.last_text, "tool_calls": self.tool_calls, "turns": self.turns}


@dataclass
class HarnessOutcome:
    """How a harness run ended: its result record, and an error when the harness reported failure."""

    result: dict[str, Any] | None
    error: str | None


# --- helpers for reading untrusted JSON ---------------------------------------------------------


def _decode(line: str) -> dict[str, Any] | None:
    """The JSON object on ``line``, or None when the line holds anything else."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _dict(value: object) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty dict."""
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    """``value`` if it is a JSON array, else an empty list."""
    return value if isinstance(value, list) else []


def _str(value: object) -> str | None:
    """``value`` if it is a string, else None."""
    return value if isinstance(value, str) else None


def _int(value: object) -> int | None:
    """``value`` if it is an integer (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _tail(text: str) -> str:
    """``text`` cut to its last ``TEXT_LIMIT`` characters, marked with a leading ellipsis when cut."""
    if len(text) <= TEXT_LIMIT:
        return text
    return "\u2026" + text[-(TEXT_LIMIT - 1) :]


def _add_cost(total: float | None, amount: float | None) -> float | None:
    """``total`` plus ``amount`` when there is one; ``total`` unchanged otherwise."""
    if amount is None:
        return total
    return round((total or 0.0) + amount, 10)


def _add_tokens(total: dict[str, Any] | None, counts: dict[str, object]) -> dict[str, Any] | None:
    """``total`` with each integer in ``counts`` added under its name; None stays None if nothing counted."""
    numbers = {name: n for name, value in counts.items() if (n := _int(value)) is not None}
    if not numbers:
        return total
    merged = dict(total or {})
    for name, n in numbers.items():
        merged[name] = merged.get(name, 0) + n
    return merged


def _unique(messages: list[str]) -> list[str]:
    """``messages`` without repeats, first occurrence kept."""
    return list(dict.fromkeys(messages))


# --- parsers ------------------------------------------------------------------------------------


class Parser(ABC):
    """Reads one harness run's stdout line by line; reports progress while it runs and an outcome at the end."""

    name: ClassVar[str]

    def __init__(self) -> None:
        self.progress = HarnessProgress()
        self.usage_check = UsageCheck()  # refuses, and notes, each bogus cost or token figure
        self._finished = False

    @abstractmethod
    def feed(self, line: str) -> bool:
        """Reads one complete line (without its newline); True when ``progress`` changed."""

    @property
    def finished(self) -> bool:
        """True once the CLI's final event was seen: the run is over even if the process lingers."""
        return self._finished

    @abstractmethod
    def outcome(self, exit_code: int | None) -> HarnessOutcome:
        """The run's result and error, once its output has ended."""

    def spending(self) -> tuple[float | None, int | None]:
        """The cost (USD) and tokens (see ``usage_tokens``) reported so far: the final figures once the
        final event was seen, else what the CLI streamed while it ran; None where it reported none."""
        return None, None

    def report(self) -> dict[str, Any]:
        """The progress as JSON, with the spending so far as ``cost_usd`` and ``tokens`` when known."""
        shown = self.progress.to_json()
        cost, tokens = self.spending()
        if cost is not None:
            shown["cost_usd"] = cost
        if tokens is not None:
            shown["tokens"] = tokens
        if self.usage_check.refused:
            shown["usage_refused"] = list(self.usage_check.refused)
        return shown


class LinesParser(Parser):
    """Plain output: progress is the last non-empty line; the exit status alone decides the outcome."""

    name = "lines"

    def feed(self, line: str) -> bool:
        """Shows the line as ``last_text`` unless it is blank."""
        text = line.rstrip()
        if not text.strip():
            return False
        shown = _tail(text)
        if shown == self.progress.last_text:
            return False
        self.progress.last_text = shown
        return True

    def outcome(self, exit_code: int | None) -> HarnessOutcome:
        """No result and no error: plain output carries no verdict."""
        return HarnessOutcome(result=None, error=None)


class JsonParser(Parser):
    """A CLI that prints one JSON event per line; subclasses read the events of their CLI."""

    def __init__(self) -> None:
        super().__init__()
        self._answer: str | None = None
        self._cost: float | None = None
        self._usage: dict[str, Any] | None = None
        self._reported_turns: int | None = None
        self._session_id: str | None = None
        self._error: str | None = None
        self._errors: list[str] = []
        self._text = ""
        self._text_key: object = None

    def feed(self, line: str) -> bool:
        """Reads the event on ``line``, if it holds one."""
        event = _decode(line)
        if event is None:
            return False
        before = replace(self.progress)
        self._handle(_str(event.get("type")) or "", event)
        return self.progress != before

    @abstractmethod
    def _handle(self, kind: str, event: dict[str, Any]) -> None:
        """Reads one event whose ``type`` is ``kind``."""

    def outcome(self, exit_code: int | None) -> HarnessOutcome:
        """The result built from the events seen; failed when the CLI reported an error or never finished."""
        error = self._reported_error()
        if error is None and not self._finished:
            error = MISSING_FINAL_EVENT
        result: dict[str, Any] = {
            "answer": self._answer,
            "is_error": error is not None,
            "cost_usd": self._cost,
            "usage": self._usage,
            "turns": self._reported_turns if self._reported_turns is not None else self.progress.turns,
            "session_id": self._session_id,
        }
        result.update(self._extra_result())
        if self.usage_check.refused:
            result["usage_refused"] = list(self.usage_check.refused)
        return HarnessOutcome(result=result, error=error)

    def _reported_error(self) -> str | None:
        """The failure the CLI itself reported, if any."""
        return self._error

    def spending(self) -> tuple[float | None, int | None]:
        """The cost and usage read so far: running totals for the CLIs that stream them (pi, opencode),
        the final event's for the others."""
        return self._cost, usage_tokens(self._usage)

    def _extra_result(self) -> dict[str, Any]:
        """CLI-specific result fields; by default the error messages the CLI printed, if any."""
        return {"errors": _unique(self._errors)} if self._errors else {}

    def _show_text(self, key: object, text: str) -> None:
        """Shows assistant ``text``, appended to the text shown before when both share ``key``."""
        if key is not None and key == self._text_key:
            self._text += text
        else:
            self._text = text
        self._text_key = key
        self.progress.last_text = _tail(self._text)

    def _fail(self, message: str) -> None:
        """Records the failure the CLI reported."""
        self._errors.append(message)
        self._error = message


class ClaudeParser(JsonParser):
    """Claude Code, ``--output-format stream-json --verbose``: the final event is the ``type: result`` line."""

    name = "claude"

    def __init__(self) -> None:
        super().__init__()
        self._message_id: object = object()
        self._subtype: str | None = None
        self._claude_errors: list[str] | None = None
        self._live_tokens: dict[object, int] = {}  # by message: its latest usage while the run goes on

    def _handle(self, kind: str, event: dict[str, Any]) -> None:
        match kind:
            case "system":
                self._session_id = _str(event.get("session_id")) or self._session_id
            case "assistant":
                self._on_assistant(event)
            case "result":
                self._on_result(event)

    def _on_assistant(self, event: dict[str, Any]) -> None:
        """Counts a turn per new main-thread message id; shows its text; counts its tool calls."""
        message = _dict(event.get("message"))
        message_id = _str(message.get("id"))
        if (tokens := usage_tokens(self.usage_check.usage(message.get("usage"), "message.usage"))) is not None:
            self._live_tokens[message_id or len(self._live_tokens)] = tokens
        if event.get("parent_tool_use_id") is None and (message_id is None or message_id != self._message_id):
            self.progress.turns += 1
            self._message_id = message_id
        for block in map(_dict, _list(message.get("content"))):
            kind = block.get("type")
            if kind == "text" and (text := _str(block.get("text"))):
                self._show_text(message_id, text)
            elif kind in ("tool_use", "server_tool_use"):
                self.progress.tool_calls += 1

    def _on_result(self, event: dict[str, Any]) -> None:
        """Reads the final result: answer, cost, usage, turns, session, and whether it is an error."""
        self._finished = True
        self._answer = _str(event.get("result"))
        self._cost = self.usage_check.cost(event.get("total_cost_usd"), "total_cost_usd")
        usage = event.get("usage")
        self._usage = self.usage_check.usage(usage, "usage") if isinstance(usage, dict) else None
        self._reported_turns = _int(event.get("num_turns"))
        self._session_id = _str(event.get("session_id")) or self._session_id
        self._subtype = _str(event.get("subtype"))
        if "errors" in event:
            self._claude_errors = [str(e) for e in _list(event.get("errors"))]
        if event.get("is_error") is True or (self._subtype or "").startswith("error"):
            self._error = self._error_text()

    def spending(self) -> tuple[float | None, int | None]:
        """The result's cost and usage once it came; before, the usage of the assistant messages so far
        (each message's latest; Claude streams no cost before the result)."""
        cost, tokens = super().spending()
        if tokens is None and self._live_tokens:
            tokens = sum(self._live_tokens.values())
        return cost, tokens

    def _error_text(self) -> str:
        """The reported failure: the subtype, then the errors list or the result text."""
        detail = "; ".join(self._claude_errors or []) or self._answer or "claude reported an error"
        if self._subtype and self._subtype != "success":
            return f"{self._subtype}: {detail}"
        return detail

    def _extra_result(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self._subtype is not None:
            extra["subtype"] = self._subtype
        if self._claude_errors:
            extra["errors"] = self._claude_errors
        return extra


_CODEX_TOOL_ITEMS = frozenset({"command_execution", "mcp_tool_call", "file_change", "web_search", "collab_tool_call"})


class CodexParser(JsonParser):
    """Codex, ``codex exec --json``: the final event is ``turn.completed`` or ``turn.failed``."""

    name = "codex"

    def __init__(self) -> None:
        super().__init__()
        self._tool_ids: set[str] = set()

    def _handle(self, kind: str, event: dict[str, Any]) -> None:
        match kind:
            case "thread.started":
                self._session_id = _str(event.get("thread_id")) or self._session_id
            case "turn.started":
                self.progress.turns += 1
            case "item.started" | "item.updated" | "item.completed":
                self._on_item(_dict(event.get("item")), completed=kind == "item.completed")
            case "turn.completed":
                self._on_turn_completed(event)
            case "turn.failed":
                self._finished = True
                self._fail(_str(_dict(event.get("error")).get("message")) or "codex turn failed")
            case "error":
                self._errors.append(_str(event.get("message")) or "codex reported an error")

    def _on_item(self, item: dict[str, Any], *, completed: bool) -> None:
        """Shows completed agent messages; counts each tool item once, when first seen."""
        kind = item.get("type")
        if kind == "agent_message" and completed and (text := _str(item.get("text"))) is not None:
            self._answer = text
            self._show_text(None, text)
        elif kind in _CODEX_TOOL_ITEMS:
            item_id = _str(item.get("id"))
            if item_id is None:
                self.progress.tool_calls += 1 if completed else 0
            elif item_id not in self._tool_ids:
                self._tool_ids.add(item_id)
                self.progress.tool_calls += 1

    def _on_turn_completed(self, event: dict[str, Any]) -> None:
        """The final event of a successful turn; its usage is the thread's running total."""
        self._finished = True
        usage = event.get("usage")
        if isinstance(usage, dict):
            self._usage = self.usage_check.usage(usage, "usage")

    def _reported_error(self) -> str | None:
        """``turn.failed``, else the ``error`` lines; but a later ``turn.completed`` wins (codex retried)."""
        if self._error is None and self._errors and not self._finished:
            return "; ".join(_unique(self._errors))
        return self._error


class GeminiParser(JsonParser):
    """Gemini CLI, ``-o stream-json``: the final event is the ``type: result`` line."""

    name = "gemini"

    def __init__(self) -> None:
        super().__init__()
        self._deltas: list[str] = []
        self._in_assistant_turn = False

    def _handle(self, kind: str, event: dict[str, Any]) -> None:
        match kind:
            case "init":
                self._session_id = _str(event.get("session_id")) or self._session_id
            case "message":
                self._on_message(event)
            case "tool_use":
                self._in_assistant_turn = False
                self.progress.tool_calls += 1
            case "tool_result":
                self._in_assistant_turn = False
            case "error":
                self._errors.append(_str(event.get("message")) or "gemini reported an error")
            case "result":
                self._on_result(event)

    def _on_message(self, event: dict[str, Any]) -> None:
        """Collects assistant text; a run of assistant messages between tool events is one turn.

        The answer is the last turn's deltas joined, as the CLI's own ``-o json`` ``response``
        (0.61.0 starts its response text afresh at each turn).
        """
        if event.get("role") != "assistant":
            self._in_assistant_turn = False
            return
        if not self._in_assistant_turn:
            self._in_assistant_turn = True
            self.progress.turns += 1
            self._deltas = []
        text = _str(event.get("content"))
        if not text:
            return
        if event.get("delta") is True:
            self._deltas.append(text)
            self._answer = "".join(self._deltas)
            self._show_text(self.progress.turns, text)
        else:
            self._show_text(None, text)

    def _on_result(self, event: dict[str, Any]) -> None:
        """Reads the final status and token stats."""
        self._finished = True
        stats = _dict(event.get("stats"))
        usage = {k: v for k, v in stats.items() if k not in ("duration_ms", "tool_calls") and _int(v) is not None}
        self._usage = self.usage_check.usage(usage, "stats") or None
        if event.get("status") == "error":
            error = event.get("error")
            message = _str(_dict(error).get("message")) or _str(error)
            self._fail(message or (self._errors[-1] if self._errors else "gemini reported status error"))


class PiParser(JsonParser):
    """pi, ``--mode json``: the final event is ``agent_end``; each assistant ``message_end`` is one turn."""

    name = "pi"

    def __init__(self) -> None:
        super().__init__()
        self._stop_error: str | None = None

    def _handle(self, kind: str, event: dict[str, Any]) -> None:
        match kind:
            case "session":
                self._session_id = _str(event.get("id")) or self._session_id
            case "message_update":
                message = _dict(event.get("message"))
                if message.get("role") == "assistant" and (text := self._text_of(message)):
                    self._show_text(None, text)
            case "tool_execution_start":
                self.progress.tool_calls += 1
            case "message_end":
                self._on_message_end(_dict(event.get("message")))
            case "agent_end":
                self._finished = True

    @staticmethod
    def _text_of(message: dict[str, Any]) -> str:
        """The text parts of a pi message, joined."""
        parts = map(_dict, _list(message.get("content")))
        return "".join(text for part in parts if part.get("type") == "text" and (text := _str(part.get("text"))))

    def _on_message_end(self, message: dict[str, Any]) -> None:
        """A finished assistant message: its text is the answer so far; its usage and cost add up."""
        if message.get("role") != "assistant":
            return
        self.progress.turns += 1
        text = self._text_of(message)
        self._answer = text or None
        if text:
            self._show_text(None, text)
        usage = _dict(message.get("usage"))
        self._cost = _add_cost(self._cost, self.usage_check.cost(_dict(usage.get("cost")).get("total"), "cost.total"))
        self._usage = _add_tokens(
            self._usage,
            self.usage_check.usage(
                {
                    "input_tokens": usage.get("input"),
                    "output_tokens": usage.get("output"),
                    "cache_read_tokens": usage.get("cacheRead"),
                    "cache_write_tokens": usage.get("cacheWrite"),
                    "total_tokens": usage.get("totalTokens"),
                },
                "usage",
            ),
        )
        stop = _str(message.get("stopReason"))
        if stop in ("error", "aborted"):
            self._stop_error = _str(message.get("errorMessage")) or f"pi stopped: {stop}"
            self._errors.append(self._stop_error)
        else:
            self._stop_error = None

    def _reported_error(self) -> str | None:
        """The error of the last assistant message: an earlier one may have been retried."""
        return self._stop_error


class OpencodeParser(JsonParser):
    """opencode, ``run --format json``: the run ends at a ``step_finish`` whose reason is not ``tool-calls``
    (the model's last step; opencode 1.18 prints nothing after it) or at ``done`` (printed by earlier
    versions); a later ``step_start`` means it went on. Every ``error`` line is a failure."""

    name = "opencode"

    def _handle(self, kind: str, event: dict[str, Any]) -> None:
        self._session_id = _str(event.get("sessionID")) or self._session_id
        part = _dict(event.get("part"))
        match kind:
            case "step_start":
                self.progress.turns += 1
                self._finished = False
            case "text":
                if (text := _str(part.get("text"))) is not None:
                    self._answer = text
                    self._show_text(None, text)
            case "tool_use":
                self.progress.tool_calls += 1
            case "step_finish":
                self._on_step_finish(part)
                self._finished = self._finished or part.get("reason") != "tool-calls"
            case "error":
                self._fail(self._error_message(event.get("error")))
            case "done":
                self._finished = True

    def _reported_error(self) -> str | None:
        """Every ``error`` line, joined: opencode goes on after one and exits 1 at the end."""
        return "; ".join(_unique(self._errors)) if self._errors else None

    def _on_step_finish(self, part: dict[str, Any]) -> None:
        """Adds a step's cost and tokens."""
        self._cost = _add_cost(self._cost, self.usage_check.cost(part.get("cost"), "cost"))
        tokens = _dict(part.get("tokens"))
        cache = _dict(tokens.get("cache"))
        self._usage = _add_tokens(
            self._usage,
            self.usage_check.usage(
                {
                    "input_tokens": tokens.get("input"),
                    "output_tokens": tokens.get("output"),
                    "reasoning_tokens": tokens.get("reasoning"),
                    "cache_read_tokens": cache.get("read"),
                    "cache_write_tokens": cache.get("write"),
                },
                "tokens",
            ),
        )

    @staticmethod
    def _error_message(error: object) -> str:
        """The text of an opencode error object: ``data.message``, else ``message``, else ``name``."""
        if isinstance(error, str) and error:
            return error
        fields = _dict(error)
        return (
            _str(_dict(fields.get("data")).get("message"))
            or _str(fields.get("message"))
            or _str(fields.get("name"))
            or "opencode reported an error"
        )


PARSERS: dict[str, type[Parser]] = {
    parser.name: parser for parser in (ClaudeParser, CodexParser, GeminiParser, PiParser, OpencodeParser, LinesParser)
}
"""Every parser by name: the values a profile's ``parser`` may take."""


def make_parser(name: str) -> Parser:
    """A fresh parser for one run; ValueError naming the allowed names when ``name`` is unknown."""
    parser = PARSERS.get(name)
    if parser is None:
        raise ValueError(f"unknown harness parser {name!r}; allowed: {', '.join(sorted(PARSERS))}")
    return parser()
