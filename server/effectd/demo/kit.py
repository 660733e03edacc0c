"""What the demo's sections share: its pace, the terminal, and calling the server's tools."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from mcp import Client
from mcp.shared.dispatcher import ProgressFnT

HARNESS = "fake-claude"
GROUP = "demo"


class DemoFailed(Exception):
    """Raised when something the demo sets out to show did not happen."""


@dataclass(frozen=True)
class Pace:
    """How long the demo's pretend work takes: a watchable pace, or a fast one for tests."""

    lint_s: float
    tests_s: float
    agent_delay_s: tuple[float, float]
    agent_steps: tuple[int, int]
    flow_s: tuple[float, float, float, float]  # fetch, lint, test, report
    runaway_watch_s: float  # how long the runaway is watched before it is cancelled
    runaway_grace_s: float = 0.5


NORMAL = Pace(
    lint_s=3.0,
    tests_s=4.0,
    agent_delay_s=(0.3, 0.4),
    agent_steps=(4, 3),
    flow_s=(0.5, 1.5, 1.5, 0.2),
    runaway_watch_s=1.2,
)
FAST = Pace(
    lint_s=0.6,
    tests_s=0.8,
    agent_delay_s=(0.1, 0.12),
    agent_steps=(2, 2),
    flow_s=(0.2, 0.5, 0.5, 0.0),
    runaway_watch_s=0.0,
)


# --- the terminal ---------------------------------------------------------------------------------


class Screen:
    """Plain text for the terminal, with a little colour when stdout is one."""

    PALETTE = ("36", "35", "33", "34", "32", "96", "95")

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.colour = out.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
        self._labels: dict[str, str] = {}
        self.width = 12

    def paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour else text

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def section(self, title: str) -> None:
        self.say()
        self.say(self.paint(f"== {title} ==", "1"))

    def note(self, text: str) -> None:
        self.say(self.paint(f"   {text}", "2"))

    def good(self, text: str) -> str:
        return self.paint(text, "32")

    def bad(self, text: str) -> str:
        return self.paint(text, "31")

    def label(self, label: str) -> str:
        code = self._labels.setdefault(label, self.PALETTE[len(self._labels) % len(self.PALETTE)])
        return self.paint(f"{label:<{self.width}}", code)

    def status(self, status: str) -> str:
        return self.good(status) if status == "succeeded" else self.bad(status)


# --- talking to the server -----------------------------------------------------------------------


async def call(client: Client, tool: str, progress: ProgressFnT | None = None, **arguments: Any) -> dict[str, Any]:
    """Calls a tool; its structured result, or DemoFailed with the server's error text."""
    result = await client.call_tool(tool, arguments, progress_callback=progress)
    if result.is_error:
        text = " ".join(getattr(block, "text", "") for block in result.content or [])
        raise DemoFailed(f"{tool} was refused: {text}")
    data = result.structured_content
    if data is None:
        data = json.loads(getattr(result.content[0], "text", "null"))
    if not isinstance(data, dict):
        raise DemoFailed(f"{tool} returned {data!r}, not an object")
    return data


def seconds(iso: str | None) -> float:
    """An ISO 8601 timestamp as seconds since the epoch."""
    if not iso:
        raise DemoFailed("a finished effect has no start or finish time")
    return datetime.fromisoformat(iso).timestamp()


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a zombie is dead, only not yet reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def py(code: str, *args: str) -> list[str]:
    return [sys.executable, "-u", "-c", code, *args]


def agent_line(line: str) -> str | None:
    """One line of Claude's stream-json, condensed for a human (None: not worth showing)."""
    try:
        event = json.loads(line)
    except ValueError:
        return line
    if not isinstance(event, dict):
        return line
    kind = event.get("type")
    if kind == "system":
        return f"session started (model {event.get('model')})"
    if kind == "result":
        return f"final `result` event ({event.get('subtype')})"
    if kind != "assistant":
        return None
    shown = []
    for block in (event.get("message") or {}).get("content") or []:
        if block.get("type") == "text":
            shown.append(f"says: {block.get('text')}")
        elif block.get("type") == "tool_use":
            shown.append(f"calls {block.get('name')}: {(block.get('input') or {}).get('command', '...')}")
    return "; ".join(shown) or None


def describe(screen: Screen, record: dict[str, Any]) -> str:
    """One line for a finished effect: status, duration, and its result."""
    text = f"done: {screen.status(record['status'])} in {float(record['duration_s'] or 0):.2f} s"
    result = record.get("result")
    if record["kind"] == "harness" and isinstance(result, dict):
        text += f', answer "{result.get("answer")}", cost ${float(result.get("cost_usd") or 0):.4f}'
        text += f", {result.get('turns')} turns"
    elif result is not None:
        text += f", result {json.dumps(result)}"
    if record.get("error"):
        text += f", error: {record['error']}"
    return text
