"""A model's script: which conversation a request belongs to, and what each of its turns says.

A request is matched to a :class:`Conversation` by a substring of its opening user text (the user
text before the first assistant item), and its turn is the number of assistant turns already in the
request's history. Both come from the request itself, so concurrent CLIs, retries and side requests
all get a deterministic answer without any per-connection state.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Text:
    """An assistant turn that answers with ``text`` (streamed in a few deltas) and ends the exchange."""

    text: str
    delay_s: float = 0.05
    """Pause between streamed deltas, so progress can be seen while the turn streams."""


@dataclass(frozen=True)
class ToolCall:
    """An assistant turn that calls one tool, e.g. ``ToolCall("Bash", {"command": "echo hi"})``."""

    name: str
    input: dict[str, Any]
    text: str = ""
    """Text streamed before the call (shown as the CLI's progress)."""
    background: bool = False


@dataclass(frozen=True)
class Error:
    """A turn answered with an HTTP error status and the API's error body."""

    status: int
    message: str
    type: str = "invalid_request_error"


@dataclass(frozen=True)
class Dynamic:
    """A turn decided when the request arrives: ``decide(body)`` (async) returns the turn to serve.

    For what a real model would read from the history, e.g. an effect id in an earlier tool result.
    """

    decide: Callable[[dict[str, Any]], Awaitable[Text | ToolCall | Error]]


Turn = Text | ToolCall | Error | Dynamic


@dataclass(frozen=True)
class Conversation:
    """The turns served to every request whose opening user text contains ``match``."""

    match: str
    turns: Sequence[Turn]


@dataclass
class Script:
    """Conversations tried in order; a request matching none gets ``default``."""

    conversations: Sequence[Conversation] = ()
    default: Turn = field(default_factory=lambda: Text("ok"))

    def turn_for(self, opening: str, index: int) -> tuple[str | None, int, Turn]:
        """(matched key, turn index, turn) for a request; past the end, the last turn is repeated."""
        for conversation in self.conversations:
            if conversation.match in opening:
                turns = conversation.turns
                if not turns:
                    return conversation.match, index, self.default
                return conversation.match, index, turns[min(index, len(turns) - 1)]
        return None, index, self.default

    @classmethod
    def from_json(cls, data: Any) -> Script:
        """A script from JSON: ``{"conversations": [{"match": ..., "turns": [{"text": ...} |
        {"tool": NAME, "input": {...}} | {"error": STATUS, "message": ...}]}], "default": TURN}``."""

        def turn(item: dict[str, Any]) -> Turn:
            if "tool" in item:
                return ToolCall(item["tool"], dict(item.get("input", {})), item.get("text", ""))
            if "error" in item:
                return Error(int(item["error"]), str(item.get("message", "scripted error")))
            return Text(str(item["text"]), float(item.get("delay_s", 0.05)))

        conversations = [
            Conversation(str(c["match"]), [turn(t) for t in c["turns"]]) for c in data.get("conversations", [])
        ]
        default = turn(data["default"]) if "default" in data else Text("ok")
        return cls(conversations, default)


def text_of(content: Any) -> str:
    """The text inside a message's content: a string, or text parts of a list of blocks/parts."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    if isinstance(content, list):
        for block in content:
            if isinstance(block, dict):
                value = block.get("text")
                if isinstance(value, str):
                    parts.append(value)
                elif "content" in block and block.get("type") != "tool_result":
                    parts.append(text_of(block["content"]))
            elif isinstance(block, str):
                parts.append(block)
    return "\n".join(parts)


def chunks(text: str, count: int = 3) -> list[str]:
    """``text`` cut into at most ``count`` pieces (at least one, possibly empty)."""
    if not text:
        return [""]
    size = max(1, -(-len(text) // count))
    return [text[i : i + size] for i in range(0, len(text), size)]


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
