"""The parsers on streams recorded from the real CLIs (tests/fixtures/real, `python -m tests.model_server.record`).

Printed by Claude Code 2.1.332, Codex 0.171.0, pi 0.73.1, opencode 1.18.33 and Gemini CLI 0.61.0 themselves, run
with the built-in profiles' command lines against the scripted model server: one Bash/`exec_command`/
`run_shell_command` call of `echo hi` then an answer, and a scripted HTTP 400.
"""

from __future__ import annotations

import json

import pytest

from effectd.harness.parsers import make_parser
from tests.helpers.paths import FIXTURES
from tests.model_server.clis import PACKAGES

REAL = FIXTURES / "real"
ANSWER = "The command printed hi, so the shell works."
CLAUDE = PACKAGES["claude"][1]
CODEX = PACKAGES["codex"][1]
PI = PACKAGES["pi"][1]
OPENCODE = PACKAGES["opencode"][1]
GEMINI = PACKAGES["gemini"][1]


def parse(parser_name: str, file: str):
    parser = make_parser(parser_name)
    shown = []
    for line in (REAL / file).read_text().splitlines():
        if parser.feed(line + "\n"):
            shown.append(parser.progress.last_text)
    return parser, shown


def events(file: str) -> list[dict]:
    return [json.loads(line) for line in (REAL / file).read_text().splitlines()]


def test_claude_success_stream():
    parser, shown = parse("claude", f"claude-{CLAUDE}-stream.jsonl")
    outcome = parser.outcome(0)
    init = events(f"claude-{CLAUDE}-stream.jsonl")[0]
    assert init["type"] == "system" and init["subtype"] == "init" and init["claude_code_version"] == CLAUDE
    assert outcome.error is None
    result = outcome.result
    assert result["answer"] == ANSWER and result["is_error"] is False and result["subtype"] == "success"
    assert result["cost_usd"] == pytest.approx(0.00216) and result["turns"] == 2
    assert result["usage"]["input_tokens"] == 240 and result["usage"]["output_tokens"] == 60
    assert result["session_id"] == init["session_id"]
    # The tool call and the first turn's text arrive as progress before the answer.
    assert "I will run echo first." in shown and shown[-1] == ANSWER
    assert parser.progress.tool_calls == 1 and parser.progress.turns == 2


def test_claude_api_error_stream():
    parser, _ = parse("claude", f"claude-{CLAUDE}-stream-error.jsonl")
    outcome = parser.outcome(1)
    final = events(f"claude-{CLAUDE}-stream-error.jsonl")[-1]
    # Claude Code reports an API error with subtype "success" and is_error true, plus api_error_status.
    assert final["subtype"] == "success" and final["is_error"] is True and final["api_error_status"] == 400
    assert outcome.error == "API Error: 400 scripted: this model is switched off"
    assert outcome.result["is_error"] is True and outcome.result["cost_usd"] == 0


def test_codex_success_stream():
    parser, shown = parse("codex", f"codex-{CODEX}-stream.jsonl")
    outcome = parser.outcome(0)
    thread = events(f"codex-{CODEX}-stream.jsonl")[0]
    assert outcome.error is None
    result = outcome.result
    assert result["answer"] == ANSWER and result["cost_usd"] is None and result["turns"] == 1
    assert result["usage"] == {
        "input_tokens": 240,
        "cached_input_tokens": 0,
        "cache_write_input_tokens": 0,
        "output_tokens": 60,
        "reasoning_output_tokens": 0,
    }
    assert result["session_id"] == thread["thread_id"]
    assert "I will run echo first." in shown and shown[-1] == ANSWER
    assert parser.progress.tool_calls == 1
    # Codex 0.171 reports a warning as an `error` *item* (not an `error` event): it fails nothing.
    assert any(e.get("item", {}).get("type") == "error" for e in events(f"codex-{CODEX}-stream.jsonl"))


def test_codex_api_error_stream():
    parser, _ = parse("codex", f"codex-{CODEX}-stream-error.jsonl")
    outcome = parser.outcome(1)
    assert outcome.result["is_error"] is True
    # Codex passes the API's JSON error body through as its message.
    assert json.loads(outcome.error)["error"]["message"] == "scripted: this model is switched off"


def test_pi_success_stream():
    parser, shown = parse("pi", f"pi-{PI}-stream.jsonl")
    outcome = parser.outcome(0)
    session = events(f"pi-{PI}-stream.jsonl")[0]
    assert outcome.error is None
    result = outcome.result
    assert result["answer"] == ANSWER and result["turns"] == 2 and result["session_id"] == session["id"]
    assert result["cost_usd"] == pytest.approx(0.00162)
    assert result["usage"]["input_tokens"] == 240 and result["usage"]["total_tokens"] == 300
    assert "I will run echo first." in shown and shown[-1] == ANSWER
    assert parser.progress.tool_calls == 1


def test_pi_api_error_stream():
    parser, _ = parse("pi", f"pi-{PI}-stream-error.jsonl")
    # pi exits 0 after an API error; the failure is the last assistant message's stopReason.
    outcome = parser.outcome(0)
    assert outcome.result["is_error"] is True
    assert outcome.error is not None and outcome.error.startswith("400 ")
    assert json.loads(outcome.error[4:])["error"]["message"] == "scripted: this model is switched off"


def test_opencode_success_stream_ends_at_its_last_step_finish():
    file = f"opencode-{OPENCODE}-stream.jsonl"
    assert "done" not in {e["type"] for e in events(file)}, "opencode 1.18 prints no `done` line"
    parser, shown = parse("opencode", file)
    assert parser.finished
    outcome = parser.outcome(0)
    assert outcome.error is None
    result = outcome.result
    assert result["answer"] == ANSWER and result["turns"] == 2 and result["cost_usd"] == pytest.approx(0.00162)
    assert result["usage"]["input_tokens"] == 240 and result["session_id"] == events(file)[0]["sessionID"]
    assert "I will run echo first." in shown and parser.progress.tool_calls == 1


def test_opencode_is_not_finished_by_a_tool_step_nor_when_a_step_follows_the_last():
    lines = (REAL / f"opencode-{OPENCODE}-stream.jsonl").read_text().splitlines()
    parser = make_parser("opencode")
    for line in lines[:4]:  # through the first step_finish, whose reason is tool-calls
        parser.feed(line)
    assert not parser.finished
    for line in lines[4:]:
        parser.feed(line)
    assert parser.finished
    parser.feed(lines[0])  # another step starts: the run went on
    assert not parser.finished


def test_opencode_api_error_stream():
    parser, _ = parse("opencode", f"opencode-{OPENCODE}-stream-error.jsonl")
    outcome = parser.outcome(1)
    assert outcome.error == "scripted: this model is switched off" and outcome.result["is_error"] is True


def test_gemini_success_stream_answers_with_the_last_turn_only():
    file = f"gemini-{GEMINI}-stream.jsonl"
    parser, shown = parse("gemini", file)
    outcome = parser.outcome(0)
    assert outcome.error is None
    result = outcome.result
    # Both turns stream `delta` messages; the answer is the last turn's, as in the CLI's `-o json` response.
    deltas = [e["content"] for e in events(file) if e["type"] == "message" and e.get("delta")]
    assert "".join(deltas) == "I will run echo first." + ANSWER
    assert result["answer"] == ANSWER and result["cost_usd"] is None and result["turns"] == 2
    assert result["usage"] == {"total_tokens": 300, "input_tokens": 240, "output_tokens": 60, "cached": 0, "input": 240}
    assert result["session_id"] == events(file)[0]["session_id"]
    assert "I will run echo first." in shown and shown[-1] == ANSWER
    assert parser.progress.tool_calls == 1


def test_gemini_api_error_stream():
    parser, _ = parse("gemini", f"gemini-{GEMINI}-stream-error.jsonl")
    # Gemini CLI 0.61 exits with the HTTP status as its exit code (400 -> 144) and wraps the API's body.
    outcome = parser.outcome(144)
    assert outcome.result["is_error"] is True and outcome.error is not None
    assert outcome.error.startswith("[API Error: ") and outcome.error.endswith("]")
    assert (
        json.loads(outcome.error[len("[API Error: ") : -1])["error"]["message"]
        == "scripted: this model is switched off"
    )
