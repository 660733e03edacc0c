"""What a budget counts: the spending the harness parsers read from each CLI's stream (the fixtures in
tests/fixtures/harness, copies of shared/fixtures/harness), live while it runs and final at its end."""

from __future__ import annotations

import json

import pytest

from effectd.engine.budgets import Spend, spend_of
from effectd.harness import fake
from effectd.harness.parsers import make_parser
from tests.helpers.paths import FIXTURES
from tests.helpers.programs import clean_env, run_fake

HARNESS_FIXTURES = FIXTURES / "harness"


def feed_all(parser_name: str, fixture: str) -> list[tuple[dict, tuple[float | None, int | None]]]:
    """Each event of the fixture with the parser's spending right after it."""
    parser = make_parser(parser_name)
    seen = []
    for line in (HARNESS_FIXTURES / fixture).read_text().splitlines():
        parser.feed(line)
        seen.append((json.loads(line), parser.spending()))
    return seen


def test_claude_counts_the_usage_of_each_assistant_message_live_then_takes_the_result():
    seen = feed_all("claude", "claude-stream.jsonl")
    latest: dict[str, int] = {}
    for event, (cost, tokens) in seen:
        if event["type"] == "assistant":
            usage = event["message"]["usage"]
            latest[event["message"]["id"]] = usage["input_tokens"] + usage["output_tokens"]
            assert (cost, tokens) == (None, sum(latest.values())), "claude streams usage, not cost"
    final = seen[-1][0]
    assert final["type"] == "result"
    assert seen[-1][1] == (0.021684, final["usage"]["input_tokens"] + final["usage"]["output_tokens"])
    assert seen[-1][1][1] == sum(latest.values()) == 186  # the messages' usage adds up to the result's


def test_claude_error_run_reports_its_cost_too():
    assert feed_all("claude", "claude-stream-error.jsonl")[-1][1] == (0.011902, 10 + 127)


def test_pi_and_opencode_stream_their_cost_per_message_and_per_step():
    pi = [(event, spent) for event, spent in feed_all("pi", "pi-stream.jsonl") if event["type"] == "message_end"]
    costs = [e["message"]["usage"]["cost"]["total"] for e, _ in pi if e["message"]["role"] == "assistant"]
    assert len(costs) == 2
    first_assistant = next(spent for e, spent in pi if e["message"]["role"] == "assistant")
    assert first_assistant[0] == pytest.approx(costs[0]) and first_assistant[1] == 3 + 58
    assert feed_all("pi", "pi-stream.jsonl")[-1][1][0] == pytest.approx(sum(costs))

    opencode = feed_all("opencode", "opencode-stream.jsonl")
    steps = [(e["part"], spent) for e, spent in opencode if e["type"] == "step_finish"]
    assert steps[0][1] == (pytest.approx(0.010913), 3 + 71)
    assert opencode[-1][1][0] == pytest.approx(0.010913 + 0.002187)


def test_codex_and_gemini_report_tokens_only_at_their_final_event():
    codex = feed_all("codex", "codex-stream.jsonl")
    assert all(spent == (None, None) for _, spent in codex[:-1])
    assert codex[-1][1] == (None, 18734 + 412)
    gemini = feed_all("gemini", "gemini-stream.jsonl")
    assert all(spent == (None, None) for _, spent in gemini[:-1])
    assert gemini[-1][1] == (None, 16880 + 96)


def test_the_progress_report_carries_the_spending_so_far():
    parser = make_parser("claude")
    lines = (HARNESS_FIXTURES / "claude-stream.jsonl").read_text().splitlines()
    parser.feed(lines[1])
    report = parser.report()
    usage = json.loads(lines[1])["message"]["usage"]
    assert report["tokens"] == usage["input_tokens"] + usage["output_tokens"] == 4 + 9
    assert "cost_usd" not in report and report["turns"] == 1


def test_an_effects_spend_is_its_results_else_what_its_progress_counted():
    result = {"cost_usd": 0.5, "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 900}}
    progress = {"cost_usd": 0.1, "tokens": 3}
    assert spend_of("harness", result, progress) == Spend(0.5, 15)  # cache tokens are not counted
    assert spend_of("harness", None, progress) == Spend(0.1, 3)  # cancelled before its final event
    assert spend_of("harness", {"cost_usd": None, "usage": None}, progress) == Spend(0.1, 3)
    assert spend_of("command", result, progress) == Spend()
    assert spend_of("harness", "not a dict", ["nor", "this"]) == Spend()


def test_the_fake_harness_reports_the_tokens_asked_for_and_a_result_usage_that_adds_them_up():
    done = run_fake("--steps", "3", "--turn-tokens", "100", "--cost", "0.07", "hi")
    parser = make_parser("claude")
    live = []
    for line in done.stdout.splitlines():
        parser.feed(line)
        live.append(parser.spending())
    assert (None, 112) in live and (None, 224) in live, "each message adds 12 input + 100 output tokens"
    assert live[-1] == (0.07, 3 * 112)
    from_env = run_fake("--steps", "1", "x", env=clean_env(**{f"{fake.ENV_PREFIX}TURN_TOKENS": "7"}))
    assert '"output_tokens":7' in from_env.stdout
