"""Every parser refuses a bogus cost or token figure (negative, NaN, infinite, absurd): it is left out of
the result, the progress and the spending, and named in `usage_refused`; the result stays strict JSON."""

from __future__ import annotations

import json

import pytest

from effectd.harness.parsers import make_parser
from effectd.harness.usage import MAX_RUN_TOKENS

# Per parser: a run whose cost is bogus, whose input tokens are bogus and whose 3 output tokens are fine.
BOGUS_RUNS = {
    "claude": [
        '{"type":"result","subtype":"success","result":"ok","total_cost_usd":-1,'
        '"usage":{"input_tokens":1e400,"output_tokens":3,"server_tool_use":{"web_search_requests":NaN}}}'
    ],
    "codex": ['{"type":"turn.completed","usage":{"input_tokens":-5,"output_tokens":3,"cached_input_tokens":NaN}}'],
    "gemini": ['{"type":"result","status":"success","stats":{"input_tokens":-5,"output_tokens":3}}'],
    "pi": [
        '{"type":"message_end","message":{"role":"assistant","content":[],'
        '"usage":{"input":-5,"output":3,"cost":{"total":NaN}}}}',
        '{"type":"agent_end"}',
    ],
    "opencode": [
        f'{{"type":"step_finish","part":{{"reason":"stop","cost":Infinity,'
        f'"tokens":{{"input":{MAX_RUN_TOKENS + 1},"output":3}}}}}}'
    ],
}


@pytest.mark.parametrize("name", sorted(BOGUS_RUNS))
def test_a_bogus_cost_or_token_count_is_refused_named_and_never_counted(name: str) -> None:
    parser = make_parser(name)
    for line in BOGUS_RUNS[name]:
        parser.feed(line)
    result = parser.outcome(0).result
    assert result is not None and parser.finished
    json.dumps(result, allow_nan=False)  # no NaN nor Infinity reaches the record
    json.dumps(parser.report(), allow_nan=False)
    assert result["cost_usd"] is None
    assert parser.spending() == (None, 3), "only the sane output tokens count"
    assert result["usage_refused"] and all("refused:" in note for note in result["usage_refused"])
    assert parser.report()["usage_refused"] == result["usage_refused"]
    assert "input_tokens" not in result["usage"]


def test_sane_figures_are_kept_and_nothing_is_noted() -> None:
    parser = make_parser("claude")
    parser.feed(
        '{"type":"result","subtype":"success","total_cost_usd":0.5,"usage":{"input_tokens":2,"output_tokens":3}}'
    )
    result = parser.outcome(0).result
    assert result is not None and result["cost_usd"] == 0.5 and "usage_refused" not in result
    assert parser.spending() == (0.5, 5)
