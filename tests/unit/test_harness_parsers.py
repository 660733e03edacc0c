"""Harness parsers read each CLI's recorded stream into the right result, and never break on odd lines."""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any

import pytest

from effectd.harness.parsers import MISSING_FINAL_EVENT, PARSERS, TEXT_LIMIT, HarnessProgress, Parser, make_parser
from tests.helpers.paths import FIXTURES

HARNESS_FIXTURES = FIXTURES / "harness"  # copied from ../shared/fixtures/harness
JSON_PARSERS = sorted(name for name in PARSERS if name != "lines")

CLAUDE_ANSWER = (
    "There are two test files. Two tests pass; `test_div_by_zero` fails because `div()` does not raise "
    "`ZeroDivisionError`."
)
CODEX_ANSWER = (
    "There are two test files. `test_div_by_zero` fails: `div()` returns 0 instead of raising `ZeroDivisionError`."
)
GEMINI_ANSWER = "There are 2 test files. 2 tests pass and `test_div_by_zero` fails."  # the last turn's deltas
PI_ANSWER = "Two test files; 2 tests pass and `test_div_by_zero` fails."
OPENCODE_ANSWER = "There are two test files. Two tests pass; `test_div_by_zero` fails because `div()` returns 0."

# Per fixture file: the parser, the event type that ends the run, the expected result, error and progress.
EXPECTED: dict[str, dict[str, Any]] = {
    "claude-stream.jsonl": {
        "parser": "claude",
        "final": "result",
        "error": None,
        "result": {
            "answer": CLAUDE_ANSWER,
            "is_error": False,
            "cost_usd": pytest.approx(0.021684),
            "usage": {
                "input_tokens": 16,
                "cache_creation_input_tokens": 2544,
                "cache_read_input_tokens": 37478,
                "output_tokens": 170,
                "server_tool_use": {"web_search_requests": 0},
                "service_tier": "standard",
            },
            "turns": 3,
            "session_id": "7c1f2a9e-4b6d-4e8a-9f21-3d5c8b0a6e14",
            "subtype": "success",
        },
        "progress": HarnessProgress(last_text=CLAUDE_ANSWER, tool_calls=2, turns=3),
    },
    "claude-stream-error.jsonl": {
        "parser": "claude",
        "final": "result",
        "error": "error_max_turns: Reached maximum number of turns (2)",
        "result": {
            "answer": None,
            "is_error": True,
            "cost_usd": pytest.approx(0.011902),
            "usage": {
                "input_tokens": 10,
                "cache_creation_input_tokens": 2284,
                "cache_read_input_tokens": 24154,
                "output_tokens": 127,
                "server_tool_use": {"web_search_requests": 0},
                "service_tier": "standard",
            },
            "turns": 2,
            "session_id": "e2d4c6b8-1a3f-4c5e-8d7b-9f0a1b2c3d4e",
            "subtype": "error_max_turns",
            "errors": ["Reached maximum number of turns (2)"],
        },
        "progress": HarnessProgress(last_text="Found it in src/calc.py; reading the file.", tool_calls=2, turns=2),
    },
    "codex-stream.jsonl": {
        "parser": "codex",
        "final": "turn.completed",
        "error": None,
        "result": {
            "answer": CODEX_ANSWER,
            "is_error": False,
            "cost_usd": None,
            "usage": {"input_tokens": 18734, "cached_input_tokens": 15104, "output_tokens": 412},
            "turns": 1,
            "session_id": "019a7c2e-5b1d-7f30-9e2a-4c8d1b6f0a37",
        },
        "progress": HarnessProgress(last_text=CODEX_ANSWER, tool_calls=2, turns=1),
    },
    "gemini-stream.jsonl": {
        "parser": "gemini",
        "final": "result",
        "error": None,
        "result": {
            "answer": GEMINI_ANSWER,
            "is_error": False,
            "cost_usd": None,
            "usage": {
                "total_tokens": 17245,
                "input_tokens": 16880,
                "output_tokens": 96,
                "cached": 8192,
                "input": 8688,
            },
            "turns": 2,
            "session_id": "5f3e8d2a-9c1b-4a7e-b6d4-2e0f1a3c5b79",
        },
        "progress": HarnessProgress(
            last_text="There are 2 test files. 2 tests pass and `test_div_by_zero` fails.", tool_calls=1, turns=2
        ),
    },
    "pi-stream.jsonl": {
        "parser": "pi",
        "final": "agent_end",
        "error": None,
        "result": {
            "answer": PI_ANSWER,
            "is_error": False,
            "cost_usd": pytest.approx(0.010966 + 0.001827),
            "usage": {
                "input_tokens": 8,
                "output_tokens": 85,
                "cache_read_tokens": 2690,
                "cache_write_tokens": 2850,
                "total_tokens": 5633,
            },
            "turns": 2,
            "session_id": "3b8e1f6c-7d2a-4c9e-a5b0-6f1d2e3c4b5a",
        },
        "progress": HarnessProgress(last_text=PI_ANSWER, tool_calls=1, turns=2),
    },
    "opencode-stream.jsonl": {
        "parser": "opencode",
        # The last step's `step_finish` (reason `stop`) ends the run: opencode 1.18 prints no `done`.
        "final": "step_finish",
        "error": None,
        "result": {
            "answer": OPENCODE_ANSWER,
            "is_error": False,
            "cost_usd": pytest.approx(0.010913 + 0.002187),
            "usage": {
                "input_tokens": 8,
                "output_tokens": 104,
                "reasoning_tokens": 0,
                "cache_read_tokens": 2690,
                "cache_write_tokens": 2902,
            },
            "turns": 2,
            "session_id": "ses_3a91c4e2bffeQ7mN2xKp8RtY1z",
        },
        "progress": HarnessProgress(last_text=OPENCODE_ANSWER, tool_calls=1, turns=2),
    },
}

MALFORMED_LINES = [
    "",
    "   ",
    "plain text from the CLI",
    "Error: something went wrong",
    '{"type": "result", "result": "trunc',
    '{"type":',
    "{",
    "}",
    "[1, 2, 3]",
    '[{"type": "result", "is_error": false}]',
    "42",
    '"a JSON string"',
    "null",
    "true",
    "{not json}",
    '{"type": 7}',
    '{"type": null, "message": {}}',
    '{"type": "no_such_event", "data": [1, 2]}',
    "[" * 100_000,
    '{"a":' * 100_000,
    "x" * 5_000_000,
    json.dumps({"type": "no_such_event", "blob": "y" * 5_000_000}),
    "\x00\x01\x02 binary junk \udcff",
]

# Known event types with fields of the wrong type: must be ignored, not raise.
WRONG_SHAPES: list[dict[str, Any]] = [
    {"type": "system", "session_id": 5},
    {"type": "assistant", "message": "not an object"},
    {"type": "assistant", "message": {"id": 3, "content": "text instead of a list"}},
    {"type": "assistant", "message": {"content": [None, 1, "x", {"type": "text", "text": 5}]}},
    {"type": "result", "usage": [1], "num_turns": "3", "total_cost_usd": "cheap", "errors": "oops"},
    {"type": "thread.started", "thread_id": ["x"]},
    {"type": "item.completed", "item": "nope"},
    {"type": "item.completed", "item": {"type": "agent_message", "text": None}},
    {"type": "turn.completed", "usage": "lots"},
    {"type": "turn.failed", "error": "just a string"},
    {"type": "init", "session_id": {}},
    {"type": "message", "role": "assistant", "content": ["a"], "delta": True},
    {"type": "session", "id": 1},
    {"type": "message_update", "message": {"role": "assistant", "content": {"type": "text"}}},
    {"type": "message_end", "message": {"role": "assistant", "usage": {"cost": "free", "input": True}}},
    {"type": "step_finish", "part": {"cost": None, "tokens": {"cache": 3}}},
    {"type": "text", "part": []},
    {"type": "error", "error": 17, "message": []},
]


def fixture_lines(name: str) -> list[str]:
    """The lines of a fixture file, split on newlines only."""
    return (HARNESS_FIXTURES / name).read_text(encoding="utf-8").split("\n")


def event_type(line: str) -> str | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event.get("type") if isinstance(event, dict) else None


def run(parser_name: str, lines: list[str], exit_code: int | None = 0) -> tuple[Parser, Any]:
    parser = make_parser(parser_name)
    for line in lines:
        parser.feed(line)
    return parser, parser.outcome(exit_code)


def replace_last(lines: list[str], kind: str, event: dict[str, Any]) -> list[str]:
    """``lines`` with the last event of type ``kind`` replaced by ``event``."""
    index = max(i for i, line in enumerate(lines) if event_type(line) == kind)
    return [*lines[:index], json.dumps(event), *lines[index + 1 :]]


def test_every_fixture_file_has_expected_values() -> None:
    assert sorted(path.name for path in HARNESS_FIXTURES.glob("*.jsonl")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_fixture_parses_to_the_answer_cost_tokens_turns_and_session_it_reports(name: str) -> None:
    expected = EXPECTED[name]
    parser, outcome = run(expected["parser"], fixture_lines(name))
    assert parser.finished
    assert outcome.error == expected["error"]
    assert outcome.result == expected["result"]
    assert parser.progress == expected["progress"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_run_is_finished_exactly_when_its_final_event_arrives(name: str) -> None:
    expected = EXPECTED[name]
    lines = fixture_lines(name)
    final = max(i for i, line in enumerate(lines) if event_type(line) == expected["final"])
    parser = make_parser(expected["parser"])
    for line in lines[:final]:
        parser.feed(line)
        assert not parser.finished
    parser.feed(lines[final])
    assert parser.finished


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_run_cut_before_its_final_event_failed_whatever_its_exit_code(name: str) -> None:
    expected = EXPECTED[name]
    lines = fixture_lines(name)
    lines = lines[: min(i for i, line in enumerate(lines) if event_type(line) == expected["final"])]
    parser, outcome = run(expected["parser"], lines, exit_code=0)
    assert not parser.finished
    assert outcome.error == MISSING_FINAL_EVENT
    assert outcome.result["is_error"] is True


@pytest.mark.parametrize("parser_name", JSON_PARSERS)
def test_an_empty_output_failed_with_the_missing_final_event_error(parser_name: str) -> None:
    _, outcome = run(parser_name, [], exit_code=None)
    assert outcome.error == MISSING_FINAL_EVENT
    assert outcome.result["answer"] is None


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_malformed_lines_between_events_change_nothing(name: str) -> None:
    expected = EXPECTED[name]
    noisy: list[str] = []
    for line in fixture_lines(name):
        noisy += [line, *MALFORMED_LINES[:18]]
    _, outcome = run(expected["parser"], noisy)
    assert outcome.result == expected["result"]
    assert outcome.error == expected["error"]


@pytest.mark.parametrize("parser_name", JSON_PARSERS)
def test_malformed_lines_are_ignored_without_raising(parser_name: str) -> None:
    parser = make_parser(parser_name)
    changed = [parser.feed(line) for line in MALFORMED_LINES]
    assert not any(changed)
    assert parser.progress == HarnessProgress()
    assert not parser.finished


def test_lines_parser_takes_any_line_as_text_without_raising() -> None:
    parser = make_parser("lines")
    for line in MALFORMED_LINES:
        parser.feed(line)
        assert parser.progress.last_text is None or len(parser.progress.last_text) <= TEXT_LIMIT
    assert parser.progress.last_text == "\x00\x01\x02 binary junk \udcff"
    assert parser.outcome(0).error is None


@pytest.mark.parametrize("parser_name", JSON_PARSERS)
def test_known_events_with_fields_of_the_wrong_type_are_ignored(parser_name: str) -> None:
    parser = make_parser(parser_name)
    for event in WRONG_SHAPES:
        parser.feed(json.dumps(event))
    outcome = parser.outcome(1)
    assert isinstance(outcome.result, dict)
    json.dumps(outcome.result)


EVENT_TYPES = sorted(
    {str(event["type"]) for event in WRONG_SHAPES}
    | {"user", "tool_use", "tool_result", "item.started", "turn.started", "message_start", "agent_end"}
    | {"tool_execution_start", "step_start", "done", "message", "result"}
)
FIELD_NAMES = ["message", "content", "item", "part", "usage", "error", "role", "text", "delta", "id", "stats"]
FIELD_NAMES += ["status", "result", "is_error", "errors", "session_id", "sessionID", "stopReason", "tokens", "cost"]


def random_json(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value, nested a few levels, using the field names the parsers look for."""
    leaves = [None, True, False, 0, -1, 3, 2.5, "", "text", "assistant", "agent_message", "error", "text"]
    if depth >= 3 or rng.random() < 0.4:
        return rng.choice(leaves)
    if rng.random() < 0.5:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(FIELD_NAMES + ["type"]): random_json(rng, depth + 1) for _ in range(rng.randrange(5))}


@pytest.mark.parametrize("parser_name", JSON_PARSERS)
def test_random_sequences_of_events_parse_without_raising(parser_name: str) -> None:
    rng = random.Random(f"effectd-{parser_name}")
    for _ in range(300):
        parser = make_parser(parser_name)
        for _ in range(rng.randrange(8)):
            event = {name: random_json(rng) for name in rng.sample(FIELD_NAMES, rng.randrange(5))}
            event["type"] = rng.choice(EVENT_TYPES)
            assert isinstance(parser.feed(json.dumps(event)), bool)
        outcome = parser.outcome(0)
        assert outcome.result is not None
        assert (outcome.error is None) == (outcome.result["is_error"] is False)
        json.dumps(outcome.result)
        json.dumps(parser.progress.to_json())


def test_claude_error_result_fails_the_run_with_its_subtype_and_errors() -> None:
    _, outcome = run("claude", fixture_lines("claude-stream-error.jsonl"))
    assert outcome.error is not None
    assert "error_max_turns" in outcome.error
    assert "Reached maximum number of turns (2)" in outcome.error


def test_claude_is_error_with_subtype_success_is_still_a_failure() -> None:
    lines = fixture_lines("claude-stream.jsonl")
    final = json.loads(next(line for line in lines if event_type(line) == "result"))
    final.update(is_error=True, result="API Error: 529 Overloaded")
    _, outcome = run("claude", replace_last(lines, "result", final))
    assert outcome.error == "API Error: 529 Overloaded"
    assert outcome.result["is_error"] is True
    assert outcome.result["subtype"] == "success"


def test_claude_feed_reports_a_change_only_when_progress_moved() -> None:
    lines = fixture_lines("claude-stream.jsonl")
    parser = make_parser("claude")
    assert parser.feed(lines[0]) is False  # system init
    assert parser.feed(lines[1]) is True  # first assistant text
    assert parser.feed(lines[3]) is False  # tool result
    assert parser.feed(lines[2]) is True  # a tool call


def test_claude_subagent_messages_do_not_count_as_turns() -> None:
    event = {
        "type": "assistant",
        "parent_tool_use_id": "toolu_1",
        "message": {"id": "msg_sub", "content": [{"type": "text", "text": "subagent says hi"}]},
    }
    parser = make_parser("claude")
    parser.feed(json.dumps(event))
    assert parser.progress == HarnessProgress(last_text="subagent says hi", tool_calls=0, turns=0)


def test_codex_turn_failed_fails_the_run_with_its_message() -> None:
    lines = replace_last(
        fixture_lines("codex-stream.jsonl"),
        "turn.completed",
        {"type": "turn.failed", "error": {"message": "stream disconnected before completion"}},
    )
    parser, outcome = run("codex", lines)
    assert parser.finished
    assert outcome.error == "stream disconnected before completion"
    assert outcome.result["errors"] == ["stream disconnected before completion"]


def test_codex_error_line_without_a_completed_turn_fails_the_run() -> None:
    lines = replace_last(
        fixture_lines("codex-stream.jsonl"), "turn.completed", {"type": "error", "message": "quota exceeded"}
    )
    _, outcome = run("codex", lines, exit_code=1)
    assert outcome.error == "quota exceeded"


def test_codex_error_line_followed_by_a_completed_turn_is_a_retried_error_not_a_failure() -> None:
    lines = fixture_lines("codex-stream.jsonl")
    lines.insert(2, json.dumps({"type": "error", "message": "Reconnecting... 1/5"}))
    _, outcome = run("codex", lines)
    assert outcome.error is None
    assert outcome.result["answer"] == CODEX_ANSWER
    assert outcome.result["errors"] == ["Reconnecting... 1/5"]


def test_gemini_result_status_error_fails_the_run_with_its_message() -> None:
    lines = replace_last(
        fixture_lines("gemini-stream.jsonl"),
        "result",
        {"type": "result", "status": "error", "error": {"type": "FatalTurnLimitedError", "message": "turn limit"}},
    )
    parser, outcome = run("gemini", lines, exit_code=53)
    assert parser.finished
    assert outcome.error == "turn limit"
    assert outcome.result["usage"] is None


def test_gemini_killed_by_sigterm_exits_zero_without_result_and_did_not_succeed() -> None:
    lines = [line for line in fixture_lines("gemini-stream.jsonl") if event_type(line) != "result"]
    _, outcome = run("gemini", lines, exit_code=0)
    assert outcome.error == MISSING_FINAL_EVENT
    assert outcome.result["answer"] == GEMINI_ANSWER


def test_pi_assistant_stop_reason_error_fails_the_run_even_with_exit_zero() -> None:
    failed = {
        "type": "message_end",
        "message": {
            "role": "assistant",
            "content": [],
            "usage": {"input": 1, "output": 0, "cost": {"total": 0.0001}},
            "stopReason": "error",
            "errorMessage": "429 rate limited",
        },
    }
    lines = replace_last(fixture_lines("pi-stream.jsonl"), "message_end", failed)
    parser, outcome = run("pi", lines, exit_code=0)
    assert parser.finished
    assert outcome.error == "429 rate limited"
    assert outcome.result["answer"] is None
    assert outcome.result["cost_usd"] == pytest.approx(0.010966 + 0.0001)


def test_pi_error_followed_by_a_successful_retry_succeeds() -> None:
    failed = {"type": "message_end", "message": {"role": "assistant", "stopReason": "error", "errorMessage": "x"}}
    lines = fixture_lines("pi-stream.jsonl")
    lines.insert(5, json.dumps(failed))
    _, outcome = run("pi", lines)
    assert outcome.error is None
    assert outcome.result["answer"] == PI_ANSWER
    assert outcome.result["errors"] == ["x"]


def test_opencode_error_line_fails_the_run_even_after_done() -> None:
    error = {"type": "error", "sessionID": "ses_1", "error": {"name": "APIError", "data": {"message": "bad key"}}}
    lines = fixture_lines("opencode-stream.jsonl")
    lines.insert(-2, json.dumps(error))
    parser, outcome = run("opencode", lines, exit_code=1)
    assert parser.finished
    assert outcome.error == "bad key"


def test_lines_parser_shows_the_last_non_empty_line_and_leaves_the_verdict_to_the_exit_status() -> None:
    parser = make_parser("lines")
    assert parser.feed("compiling") is True
    assert parser.feed("") is False
    assert parser.feed("   ") is False
    assert parser.feed("done\r") is True
    assert parser.feed("done") is False
    assert parser.progress == HarnessProgress(last_text="done", tool_calls=0, turns=0)
    assert not parser.finished
    outcome = parser.outcome(1)
    assert (outcome.result, outcome.error) == (None, None)


@pytest.mark.parametrize("parser_name", sorted(PARSERS))
def test_last_text_keeps_the_end_of_a_long_text(parser_name: str) -> None:
    text = "start " + "x" * 10_000 + " the end"
    line = {
        "lines": text,
        "claude": json.dumps(
            {"type": "assistant", "message": {"id": "m", "content": [{"type": "text", "text": text}]}}
        ),
        "codex": json.dumps({"type": "item.completed", "item": {"type": "agent_message", "text": text}}),
        "gemini": json.dumps({"type": "message", "role": "assistant", "content": text, "delta": True}),
        "pi": json.dumps(
            {"type": "message_end", "message": {"role": "assistant", "content": [{"type": "text", "text": text}]}}
        ),
        "opencode": json.dumps({"type": "text", "part": {"type": "text", "text": text}}),
    }[parser_name]
    parser = make_parser(parser_name)
    assert parser.feed(line) is True
    assert parser.progress.last_text is not None
    assert len(parser.progress.last_text) == TEXT_LIMIT
    assert parser.progress.last_text.endswith(" the end")


def test_make_parser_rejects_an_unknown_name_listing_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="unknown harness parser 'cursor'") as info:
        make_parser("cursor")
    for name in ("claude", "codex", "gemini", "pi", "opencode", "lines"):
        assert name in str(info.value)


# An error event of each CLI: fed to a parser, each leaves state behind (messages, a failure) in one of them.
ERROR_EVENTS: list[dict[str, Any]] = [
    {"type": "result", "subtype": "error_during_execution", "is_error": True, "errors": ["boom"]},
    {"type": "error", "message": "boom"},
    {"type": "turn.failed", "error": {"message": "boom"}},
    {"type": "message_end", "message": {"role": "assistant", "stopReason": "error", "errorMessage": "boom"}},
    {"type": "error", "sessionID": "ses_1", "error": {"name": "APIError", "data": {"message": "boom"}}},
]


@pytest.mark.parametrize("name", JSON_PARSERS)
def test_make_parser_gives_a_fresh_parser_each_time(name: str) -> None:
    # The first parser reads a run with errors in it; the second, made after it, must start from nothing
    # and read a clean run to exactly that run's result, leaving the first one as it was.
    fixtures = sorted(f for f, e in EXPECTED.items() if e["parser"] == name)
    lines = fixture_lines(fixtures[0])
    final = max(i for i, line in enumerate(lines) if event_type(line) == EXPECTED[fixtures[0]]["final"])
    first = make_parser(name)
    for line in [*lines[:final], *map(json.dumps, ERROR_EVENTS), *lines[final:]]:
        first.feed(line)
    first_outcome = first.outcome(0)
    first_progress = dataclasses.replace(first.progress)
    clean = fixtures[-1]
    clean_outcome = (EXPECTED[clean]["result"], EXPECTED[clean]["error"])
    assert first_progress != HarnessProgress()
    assert (first_outcome.result, first_outcome.error) != clean_outcome, "state left over would not show"

    second = make_parser(name)
    assert second is not first and second.progress is not first.progress
    assert second.progress == HarnessProgress() and not second.finished
    for line in fixture_lines(clean):
        second.feed(line)
    outcome = second.outcome(0)
    assert (outcome.result, outcome.error) == clean_outcome
    assert second.progress == EXPECTED[clean]["progress"]
    assert (first.progress, first.outcome(0)) == (first_progress, first_outcome)


def test_make_parser_gives_a_fresh_lines_parser_each_time() -> None:
    first = make_parser("lines")
    assert first.feed("compiling") and first.progress.last_text == "compiling"
    second = make_parser("lines")
    assert second is not first and second.progress == HarnessProgress()
    assert second.feed("linking") and (first.progress.last_text, second.progress.last_text) == ("compiling", "linking")
    assert set(PARSERS) == {"claude", "codex", "gemini", "pi", "opencode", "lines"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_progress_to_json_has_every_field(name: str) -> None:
    parser, _ = run(EXPECTED[name]["parser"], fixture_lines(name))
    progress = parser.progress
    fields = {field.name: getattr(progress, field.name) for field in dataclasses.fields(progress)}
    unset = [field.name for field in dataclasses.fields(progress) if fields[field.name] == field.default]
    assert not unset, f"{name} leaves {unset} at their defaults: the comparison below would not see them"
    assert progress.to_json() == fields
    assert json.loads(json.dumps(progress.to_json())) == fields
