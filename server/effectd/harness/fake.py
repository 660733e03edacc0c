"""A fake coding-agent CLI that prints Claude Code's stream-json, for tests and demos.

Run it as ``python -m effectd.harness.fake [options] PROMPT`` (or ``effectd-fake-harness``). Every option
can also be set by an environment variable ``FAKE_HARNESS_<OPTION>`` (``FAKE_HARNESS_STEPS=5``,
``FAKE_HARNESS_FAIL=1``); a command-line option wins over its variable. Claude's own flags ``-p``,
``--output-format``, ``--verbose`` and ``--model`` are accepted and ignored, so the fake runs under the
claude profile's command template. Standard library only, so it starts fast.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

ENV_PREFIX = "FAKE_HARNESS_"
MODEL = "fake-harness-1"
_TRUE = frozenset({"1", "true", "yes", "on"})


class Turn(NamedTuple):
    """One assistant turn: its text, and the shell command of its tool call (None for the last turn)."""

    text: str
    tool_command: str | None


def _env(option: str, default: str | None = None) -> str | None:
    """The value of ``FAKE_HARNESS_<OPTION>``, else ``default``."""
    return os.environ.get(ENV_PREFIX + option.upper().replace("-", "_"), default)


def _env_flag(option: str) -> bool:
    """True when ``FAKE_HARNESS_<OPTION>`` is set to 1, true, yes or on."""
    return (_env(option) or "").strip().lower() in _TRUE


def _non_negative_int(text: str) -> int:
    """A whole number of 0 or more (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 0 or more")
    return value


def _non_negative_float(text: str) -> float:
    """A number of 0 or more (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of 0 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line; defaults come from the ``FAKE_HARNESS_*`` variables."""
    parser = argparse.ArgumentParser(
        prog="effectd-fake-harness",
        description="Pretend to be `claude -p PROMPT --output-format stream-json --verbose`.",
        epilog=f"Each option can also be set with an environment variable {ENV_PREFIX}<NAME>, e.g. {ENV_PREFIX}STEPS.",
    )
    parser.add_argument("prompt", nargs="?", help='the prompt; "-" or absent reads it from stdin')
    parser.add_argument("--steps", type=_non_negative_int, default=_env("steps", "3"), help="assistant turns (3)")
    parser.add_argument("--delay", type=_non_negative_float, default=_env("delay", "0.2"), help="line gap, s (0.2)")
    parser.add_argument("--answer", default=_env("answer"), help='final answer (default "Done: PROMPT")')
    parser.add_argument("--cost", type=_non_negative_float, default=_env("cost", "0"), help="total_cost_usd reported")
    parser.add_argument(
        "--bogus-cost",
        type=float,
        default=_env("bogus_cost"),
        help="total_cost_usd printed as given, unchecked (-100, nan, inf): a harness that reports bogus usage",
    )
    parser.add_argument(
        "--bogus-input-tokens",
        type=int,
        default=_env("bogus_input_tokens"),
        help="input_tokens printed in every usage as given, unchecked (e.g. -1000000)",
    )
    parser.add_argument(
        "--turn-tokens",
        type=_non_negative_int,
        default=_env("turn_tokens"),
        help="output tokens in the usage of each assistant message (default: about a token per 4 characters)",
    )
    parser.add_argument("--exit-code", type=int, default=_env("exit_code"), help="exit status (default 0, 1 on --fail)")
    parser.add_argument(
        "--model-url",
        metavar="URL",
        default=_env("model_url"),
        help="take the answer from a model server: GET URL (through HTTP_PROXY when set); unreachable: an error result",
    )
    parser.add_argument(
        "--write", metavar="FILE", default=_env("write"), help="append the answer to FILE (in the cwd), as an edit"
    )
    flags = {
        "--fail": "end with an error result (error_during_execution) and exit 1",
        "--no-result": "exit without printing the final result line",
        "--hang-after-result": "sleep forever after the result line, as claude sometimes does",
        "--ignore-sigterm": "ignore SIGTERM",
        "--grandchild": "start a grandchild that sleeps 600 s and print its pid",
        "--garbage": "also print a few lines that are not JSON objects",
    }
    for flag, help_text in flags.items():
        parser.add_argument(flag, action="store_true", default=_env_flag(flag.lstrip("-")), help=help_text)
    claude = parser.add_argument_group("claude flags, accepted and ignored")
    claude.add_argument("-p", "--print", action="store_true")
    claude.add_argument("--output-format", metavar="FORMAT")
    claude.add_argument("--verbose", action="store_true")
    claude.add_argument("--model", metavar="MODEL")
    return parser


class Printer:
    """Writes one line at a time, flushed, waiting ``delay`` seconds before every line but the first."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self._first = True

    def line(self, text: str) -> None:
        """Writes ``text`` and a newline, then flushes."""
        if not self._first and self.delay > 0:
            time.sleep(self.delay)
        self._first = False
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def event(self, event: dict[str, Any]) -> None:
        """Writes ``event`` as one compact JSON line."""
        self.line(json.dumps(event, separators=(",", ":")))


def plan_turns(prompt: str, steps: int, answer: str) -> list[Turn]:
    """The assistant turns: ``steps - 1`` working turns with a tool call each, then the answer."""
    topic = prompt if len(prompt) <= 60 else prompt[:57] + "..."
    turns = [Turn(f"Step {i}/{steps}: working on {topic}", f"echo step {i}") for i in range(1, steps)]
    if steps > 0:
        turns.append(Turn(answer, None))
    return turns


def start_grandchild() -> int:
    """Starts a process that sleeps 600 s in this process's group; returns its pid."""
    import subprocess

    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return child.pid


def _usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    """A claude usage object with no cache activity."""
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
        "service_tier": "standard",
    }


def _assistant(session_id: str, message_id: str, block: dict[str, Any], usage: dict[str, Any]) -> dict[str, Any]:
    """An assistant line holding one content block, as claude prints each block of a message."""
    message = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [block],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    return {
        "type": "assistant",
        "message": message,
        "parent_tool_use_id": None,
        "session_id": session_id,
        "uuid": str(uuid.uuid4()),
    }


def _tool_result(session_id: str, tool_id: str, output: str) -> dict[str, Any]:
    """The user line carrying a tool's output back to the model."""
    content = [{"tool_use_id": tool_id, "type": "tool_result", "content": output, "is_error": False}]
    return {
        "type": "user",
        "message": {"role": "user", "content": content},
        "parent_tool_use_id": None,
        "session_id": session_id,
        "uuid": str(uuid.uuid4()),
        "tool_use_result": {"stdout": output, "stderr": "", "interrupted": False, "isImage": False},
    }


def _garbage(out: Printer) -> None:
    """Lines a stream-json reader must skip: plain text, truncated JSON, an array."""
    out.line("fake-harness: this line is not JSON")
    out.line('{"type":"assistant","message":{"content":[')
    out.line("[1, 2, 3]")


INPUT_TOKENS = 12
"""The input tokens in the usage of each assistant message."""


def ask_model(url: str) -> str:
    """The model server's answer: the body of a GET of `url` (urllib honours HTTP_PROXY, as a sandbox sets it)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return f"The model said: {response.read(4096).decode('utf-8', 'replace').strip()}"


def turn_usage(args: argparse.Namespace, text: str) -> dict[str, Any]:
    """The usage an assistant message reports (each of its lines repeats it, as claude does)."""
    output = args.turn_tokens if args.turn_tokens is not None else len(text) // 4 + 1
    return _usage(INPUT_TOKENS if args.bogus_input_tokens is None else args.bogus_input_tokens, output)


def _result(
    args: argparse.Namespace, session_id: str, turns: int, answer: str, started: float, usage: dict[str, Any]
) -> dict[str, Any]:
    """The final ``type: result`` line: success with the answer, or error_during_execution with --fail.
    Its usage is the sum over the assistant messages, as claude's is."""
    elapsed_ms = int((time.monotonic() - started) * 1000)
    result: dict[str, Any] = {
        "type": "result",
        "subtype": "error_during_execution" if args.fail else "success",
        "is_error": bool(args.fail),
        "duration_ms": elapsed_ms,
        "duration_api_ms": elapsed_ms,
        "num_turns": turns,
        "stop_reason": None if args.fail else "end_turn",
        "session_id": session_id,
        "total_cost_usd": args.cost if args.bogus_cost is None else args.bogus_cost,
        "usage": usage,
        "permission_denials": [],
        "terminal_reason": "error" if args.fail else "completed",
        "uuid": str(uuid.uuid4()),
    }
    if args.fail:
        result["errors"] = [getattr(args, "fail_reason", None) or "fake harness failed as asked (--fail)"]
    else:
        result["result"] = answer
    return result


def run(args: argparse.Namespace) -> int:
    """Prints the whole run; returns the exit status."""
    started = time.monotonic()
    session_id = str(uuid.uuid4())
    out = Printer(args.delay)
    answer = args.answer if args.answer is not None else f"Done: {args.prompt}"
    if args.model_url:
        try:
            answer = ask_model(args.model_url)
        except OSError as exc:
            args.fail, args.fail_reason = True, f"cannot reach the model at {args.model_url}: {exc}"
    turns = plan_turns(args.prompt, args.steps, answer)
    if args.grandchild:
        note = f"grandchild pid {start_grandchild()}"
        turns[:1] = [Turn(f"{note}. {turns[0].text}", turns[0].tool_command)] if turns else [Turn(note, None)]

    out.event(
        {
            "type": "system",
            "subtype": "init",
            "session_id": session_id,
            "cwd": os.getcwd(),
            "tools": ["Bash"],
            "mcp_servers": [],
            "model": MODEL,
            "permissionMode": "default",
            "uuid": str(uuid.uuid4()),
        }
    )
    if args.garbage:
        _garbage(out)
    total = _usage(0, 0)
    for number, turn in enumerate(turns, start=1):
        message_id = f"msg_fake_{number:03d}"
        usage = turn_usage(args, turn.text)
        total = _usage(total["input_tokens"] + usage["input_tokens"], total["output_tokens"] + usage["output_tokens"])
        out.event(_assistant(session_id, message_id, {"type": "text", "text": turn.text}, usage))
        if turn.tool_command is not None:
            tool_id = f"toolu_fake_{number:03d}"
            tool = {"type": "tool_use", "id": tool_id, "name": "Bash", "input": {"command": turn.tool_command}}
            out.event(_assistant(session_id, message_id, tool, usage))
            out.event(_tool_result(session_id, tool_id, turn.tool_command.removeprefix("echo ")))
    if args.garbage:
        _garbage(out)

    default_status = 1 if args.fail else 0
    status: int = args.exit_code if args.exit_code is not None else default_status
    if args.write:  # the edit a coding agent makes, left uncommitted
        with open(args.write, "a", encoding="utf-8") as edited:
            edited.write(answer + "\n")
    if args.no_result:
        return status
    out.event(_result(args, session_id, args.steps, answer, started, total))
    if args.hang_after_result:
        while True:
            time.sleep(3600)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``effectd-fake-harness``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.prompt is None or args.prompt == "-":
        args.prompt = sys.stdin.read().rstrip("\n")
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Nobody reads our output any more; point stdout at /dev/null so the exit flush cannot fail.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
