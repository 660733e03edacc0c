"""Flows: DAG scheduling without barriers, templates, policies, validation, restart, and the Python API."""

from __future__ import annotations

import json
import re
import sqlite3
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from effectd.api import await_effect, run, run_effect, run_flow
from effectd.config.settings import Settings
from effectd.engine.core import Engine
from effectd.errors import EffectCancelledError, EffectFailedError, InvalidRequestError
from effectd.flows.graph import check_graph
from effectd.flows.models import FlowRecord, FlowRequest, FlowStepRecord, Step
from effectd.harness.profiles import HarnessProfile
from effectd.journal.projection import Event
from effectd.journal.store import Journal, replay_projection
from effectd.model.records import EffectSpec, new_id, now_iso, parse_iso
from tests.helpers.mcp import call, call_error, open_engine, read_until
from tests.helpers.paths import REPO
from tests.helpers.processes import SLEEP, py, stdio_params

pytestmark = pytest.mark.anyio

FAKE = (sys.executable, "-m", "effectd.harness.fake", "--delay", "0", "--steps", "1")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The conftest settings plus two fake harness profiles: the prompt as an argument, and on stdin."""
    fake = HarnessProfile(name="fake", command=(*FAKE, "{prompt}"), parser="claude")
    fake_stdin = HarnessProfile(name="fake_stdin", command=(*FAKE, "-"), parser="claude", prompt_via="stdin")
    return replace(settings, harnesses={**settings.harnesses, "fake": fake, "fake_stdin": fake_stdin})


def sleep(seconds: float, say: str | None = None) -> list[str]:
    """A step command that optionally prints a line, then sleeps."""
    if say is None:
        return py(SLEEP, str(seconds))
    return py(f"import time, sys; print({say!r}, flush=True); time.sleep(float(sys.argv[1]))", str(seconds))


def steps_by_id(flow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["step_id"]: step for step in flow["steps"]}


def at(stamp: str) -> float:
    return parse_iso(stamp).timestamp()


def db_rows(engine: Engine, sql: str, *params: Any) -> list[dict[str, Any]]:
    """Rows read straight from the engine's journal file (as any other reader would)."""
    with sqlite3.connect(f"file:{engine.settings.db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(sql, params).fetchall()]


async def event_count(engine: Engine, kind: str | None = None) -> int:
    if kind is None:
        rows = db_rows(engine, "SELECT COUNT(*) AS n FROM events")
    else:
        rows = db_rows(engine, "SELECT COUNT(*) AS n FROM events WHERE type = ?", kind)
    return int(rows[0]["n"])


async def output_of(client: Client, effect_id: str) -> str:
    chunk = await call(client, "stream_effect", effect_id=effect_id)
    return str(chunk["data"])


# --- scheduling -----------------------------------------------------------------------------------


async def test_a_diamond_runs_its_middle_steps_side_by_side_and_the_join_after_both(client, engine):
    flow = await call(
        client,
        "dispatch_flow",
        steps=[
            {"id": "a", "command": sleep(0.2)},
            {"id": "b", "needs": ["a"], "command": sleep(0.8)},
            {"id": "c", "needs": ["a"], "command": sleep(0.8)},
            {"id": "d", "needs": ["b", "c"], "command": sleep(0.2)},
        ],
    )
    assert flow["status"] == "succeeded"
    steps = steps_by_id(flow)
    a, b, c, d = (steps[name] for name in "abcd")
    assert at(b["started_at"]) < at(c["finished_at"]) and at(c["started_at"]) < at(b["finished_at"])
    assert at(b["started_at"]) >= at(a["finished_at"]) and at(c["started_at"]) >= at(a["finished_at"])
    assert at(d["started_at"]) >= max(at(b["finished_at"]), at(c["finished_at"]))
    assert flow["wall_s"] < flow["sum_step_s"] - 0.4
    assert flow["speedup"] > 1.2
    assert flow["started_at"] <= a["started_at"] and flow["finished_at"] == d["finished_at"]


async def test_a_step_starts_when_its_slowest_need_ends_not_when_its_level_does(client):
    flow = await call(
        client,
        "dispatch_flow",
        steps=[
            {"id": "long", "command": sleep(0.6)},
            {"id": "short", "command": sleep(0.1)},
            {"id": "unrelated", "command": sleep(1.6)},
            {"id": "join", "needs": ["long", "short"], "command": sleep(0.1)},
        ],
    )
    assert flow["status"] == "succeeded"
    steps = steps_by_id(flow)
    join_started = at(steps["join"]["started_at"])
    assert join_started >= at(steps["long"]["finished_at"])
    assert join_started < at(steps["unrelated"]["finished_at"]) - 0.4  # a level barrier would wait for it
    assert join_started - at(steps["long"]["finished_at"]) < 0.4


async def test_every_step_starts_no_earlier_than_every_step_it_needs_finished(client):
    shape = {"a": [], "b": [], "c": ["a"], "d": ["a", "b"], "e": ["c"], "f": ["d", "e"], "g": ["b"]}
    steps = [{"id": k, "needs": v, "command": sleep(0.05 + 0.05 * (i % 3))} for i, (k, v) in enumerate(shape.items())]
    flow = await call(client, "dispatch_flow", steps=steps)
    assert flow["status"] == "succeeded"
    by_id = steps_by_id(flow)
    for step_id, needs in shape.items():
        assert by_id[step_id]["needs"] == needs
        for need in needs:
            assert at(by_id[step_id]["started_at"]) >= at(by_id[need]["finished_at"]), (step_id, need)
    assert flow["sum_step_s"] == pytest.approx(sum(s["duration_s"] for s in flow["steps"]), abs=1e-5)


async def test_a_flow_max_concurrency_runs_its_steps_one_at_a_time(client):
    flow = await call(
        client,
        "dispatch_flow",
        steps=[{"id": f"s{i}", "command": sleep(0.2)} for i in range(3)],
        max_concurrency=1,
    )
    assert flow["status"] == "succeeded" and flow["max_concurrency"] == 1
    spans = sorted((at(s["started_at"]), at(s["finished_at"])) for s in flow["steps"])
    for (_, finished), (started, _) in zip(spans, spans[1:], strict=False):
        assert started >= finished


# --- templates ------------------------------------------------------------------------------------

PRODUCE = (
    "import json, os; print('hello {' + '{steps.b.output}}  '); result = open(os.environ['EFFECTD_RESULT_FILE'], 'w'); "
    "json.dump({'n': 42, 'nested': {'word': 'deep'}, 'items': ['x', 'y']}, result)"
)
SHOW = "import json, sys; print(json.dumps({'argv': sys.argv[1:], 'stdin': sys.stdin.read()}))"


async def test_a_step_receives_output_and_result_of_the_steps_it_needs_in_its_argv_and_stdin(client):
    flow = await call(
        client,
        "dispatch_flow",
        steps=[
            {"id": "a", "command": py(PRODUCE)},
            {"id": "b", "needs": ["a"], "command": py("print('b ran')")},
            {
                "id": "d",
                "needs": ["b"],  # a is needed transitively, through b
                "command": py(
                    SHOW,
                    "{{steps.a.output}}",
                    "n={{steps.a.result.n}}",
                    "{{ steps.a.result.nested.word }}",
                    "{{steps.a.result.nested}}",
                    "{{steps.a.result.items.1}}",
                ),
                "stdin": "{{steps.a.result}}|{{steps.b.output}}",
            },
        ],
    )
    assert flow["status"] == "succeeded", flow
    d = steps_by_id(flow)["d"]
    shown = json.loads(await output_of(client, d["effect_id"]))
    # The text inserted is never evaluated again: a's output keeps its own template text.
    assert shown["argv"] == ["hello {{steps.b.output}}", "n=42", "deep", '{"word": "deep"}', "y"]
    assert json.loads(shown["stdin"].split("|")[0]) == {"n": 42, "nested": {"word": "deep"}, "items": ["x", "y"]}
    assert shown["stdin"].endswith("|b ran")
    record = await call(client, "poll_effect", effect_id=d["effect_id"])
    assert record["command"][-5:] == shown["argv"] and record["flow_id"] == flow["flow_id"]
    assert record["step_id"] == "d" and record["group"] == flow["flow_id"]


async def test_a_harness_step_gets_its_prompt_filled_from_an_earlier_step(client):
    flow = await call(
        client,
        "dispatch_flow",
        steps=[
            {"id": "topic", "command": py("print('the sky\\n')")},
            {"id": "ask", "needs": ["topic"], "harness": "fake", "prompt": "describe {{steps.topic.output}}"},
            {"id": "piped", "needs": ["topic"], "harness": "fake_stdin", "prompt": "via stdin: {{steps.topic.output}}"},
            {"id": "use", "needs": ["ask"], "command": py(SHOW, "{{steps.ask.result.answer}}")},
        ],
    )
    assert flow["status"] == "succeeded", flow
    steps = steps_by_id(flow)
    ask = await call(client, "poll_effect", effect_id=steps["ask"]["effect_id"])
    assert ask["result"]["answer"] == "Done: describe the sky"
    assert ask["command"][-1] == "describe the sky"
    piped = await call(client, "poll_effect", effect_id=steps["piped"]["effect_id"])
    assert piped["result"]["answer"] == "Done: via stdin: the sky"
    shown = json.loads(await output_of(client, steps["use"]["effect_id"]))
    assert shown["argv"] == ["Done: describe the sky"]


async def test_a_template_that_cannot_be_filled_fails_its_step(client):
    flow = await call(
        client,
        "dispatch_flow",
        steps=[
            {"id": "a", "command": py("print('no result file')")},
            {"id": "b", "needs": ["a"], "command": py(SHOW, "{{steps.a.result.missing}}")},
        ],
    )
    assert flow["status"] == "failed"
    b = steps_by_id(flow)["b"]
    assert b["status"] == "failed" and "missing" in b["error"] and b["started_at"] is None


async def test_a_step_whose_filled_argv_would_hold_a_nul_fails_instead_of_running(client):
    flow = await call(
        client,
        "dispatch_flow",
        steps=[
            {"id": "a", "command": py("import sys; sys.stdout.write('x' + chr(0) + 'y')")},
            {"id": "b", "needs": ["a"], "command": py(SHOW, "{{steps.a.output}}")},
        ],
    )
    b = steps_by_id(flow)["b"]
    assert b["status"] == "failed" and "NUL" in b["error"] and b["started_at"] is None


# --- policies -------------------------------------------------------------------------------------


async def test_fail_fast_cancels_a_running_sibling_and_skips_the_steps_not_started(client):
    flow = await call(
        client,
        "dispatch_flow",
        steps=[
            {"id": "bad", "command": py("import time, sys; time.sleep(0.3); sys.exit(3)")},
            {"id": "sibling", "command": sleep(10, "up")},
            {"id": "after_bad", "needs": ["bad"], "command": sleep(0.1)},
            {"id": "after_sibling", "needs": ["sibling"], "command": sleep(0.1)},
        ],
        wait_s=20,
    )
    assert flow["status"] == "failed"
    steps = steps_by_id(flow)
    assert steps["bad"]["status"] == "failed" and steps["bad"]["exit_code"] == 3
    assert steps["sibling"]["status"] == "cancelled" and steps["sibling"]["cancel_reason"] == "fail_fast"
    assert steps["after_bad"]["status"] == "skipped" and steps["after_bad"]["started_at"] is None
    assert steps["after_sibling"]["status"] == "skipped" and steps["after_sibling"]["started_at"] is None
    assert flow["wall_s"] < 5


async def test_continue_lets_an_independent_branch_finish_after_a_failure(client):
    flow = await call(
        client,
        "dispatch_flow",
        policy="continue",
        steps=[
            {"id": "bad", "command": py("import sys; sys.exit(1)")},
            {"id": "slow", "command": sleep(0.5)},
            {"id": "after_bad", "needs": ["bad"], "command": sleep(0.1)},
            {"id": "after_slow", "needs": ["slow"], "command": sleep(0.1)},
        ],
    )
    assert flow["status"] == "failed" and flow["policy"] == "continue"
    statuses = {s["step_id"]: s["status"] for s in flow["steps"]}
    assert statuses == {"bad": "failed", "slow": "succeeded", "after_bad": "skipped", "after_slow": "succeeded"}


async def test_a_step_that_times_out_makes_the_flow_failed_not_cancelled(client):
    flow = await call(
        client,
        "dispatch_flow",
        steps=[
            {"id": "slow", "command": sleep(10), "timeout_s": 0.3},
            {"id": "next", "needs": ["slow"], "command": sleep(0.1)},
        ],
    )
    assert flow["status"] == "failed"
    steps = steps_by_id(flow)
    assert steps["slow"]["status"] == "cancelled" and steps["slow"]["cancel_reason"] == "timeout"
    assert steps["next"]["status"] == "skipped"


async def test_cancelling_the_flow_group_cancels_its_steps_and_the_flow(client):
    flow = await call(
        client,
        "dispatch_flow",
        background=True,
        steps=[
            {"id": "a", "command": sleep(10, "up")},
            {"id": "b", "needs": ["a"], "command": sleep(0.1)},
            {"id": "c", "command": sleep(10)},
        ],
    )
    assert flow["status"] == "running"
    a = steps_by_id(flow)["a"]["effect_id"]
    assert await read_until(client, a, "up\n", within_s=10) == "up\n"
    cancelled = await call(client, "cancel_group", group=flow["flow_id"], reason="changed my mind")
    assert len(cancelled["cancelled"]) == 3
    flow = await call(client, "poll_flow", flow_id=flow["flow_id"], wait_s=10)
    assert flow["status"] == "cancelled"
    steps = steps_by_id(flow)
    assert steps["a"]["cancel_reason"] == steps["c"]["cancel_reason"] == "user"
    assert {s["status"] for s in flow["steps"]} <= {"cancelled", "skipped"}


async def test_a_client_that_abandons_a_foreground_flow_cancels_it(client):
    flow_id = "flw-abandoned"
    steps = [{"id": "a", "command": sleep(10, "up")}, {"id": "b", "needs": ["a"], "command": sleep(0.1)}]
    with anyio.move_on_after(1.0):
        await client.call_tool("dispatch_flow", {"steps": steps, "flow_id": flow_id})
    flow = await call(client, "poll_flow", flow_id=flow_id, wait_s=10)
    assert flow["status"] == "cancelled"
    assert steps_by_id(flow)["a"]["cancel_reason"] == "client_cancelled"


# --- validation -----------------------------------------------------------------------------------

INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("no steps", {"steps": []}, "at least one step"),
    ("duplicate ids", {"steps": [{"id": "a", "command": ["true"]}, {"id": "a", "command": ["true"]}]}, "duplicate"),
    ("unknown needs", {"steps": [{"id": "a", "needs": ["x"], "command": ["true"]}]}, "unknown step 'x'"),
    (
        "a cycle",
        {
            "steps": [
                {"id": "c", "command": ["true"]},
                {"id": "a", "needs": ["c", "b"], "command": ["true"]},
                {"id": "b", "needs": ["a"], "command": ["true"]},
            ]
        },
        "a -> b -> a",
    ),
    ("a step needing itself", {"steps": [{"id": "a", "needs": ["a"], "command": ["true"]}]}, "a -> a"),
    (
        "a template naming a step not needed",
        {
            "steps": [
                {"id": "a", "command": ["true"]},
                {"id": "b", "command": ["echo", "{{steps.a.output}}"]},
            ]
        },
        "does not need",
    ),
    (
        "a template naming an unknown step",
        {"steps": [{"id": "a", "command": ["echo"], "stdin": "{{steps.zz.result}}"}]},
        "unknown step 'zz'",
    ),
    (
        "a malformed template",
        {
            "steps": [
                {"id": "a", "command": ["true"]},
                {"id": "b", "needs": ["a"], "harness": "fake", "prompt": "{{steps.a.outptu}}"},
            ]
        },
        "malformed template",
    ),
    (
        "a field of output",
        {
            "steps": [
                {"id": "a", "command": ["true"]},
                {"id": "b", "needs": ["a"], "command": ["echo", "{{steps.a.output.x}}"]},
            ]
        },
        "no fields",
    ),
    (
        "a cwd that is not a directory",
        {"steps": [{"id": "a", "command": ["true"], "cwd": "/no/such/dir"}]},
        "not a directory",
    ),
    ("NUL in an argv element", {"steps": [{"id": "a", "command": ["echo", "x\u0000y"]}]}, "NUL"),
    ("both forms", {"steps": [{"id": "a", "command": ["true"], "harness": "fake", "prompt": "p"}]}, "exactly one"),
    ("an unknown harness", {"steps": [{"id": "a", "harness": "nope", "prompt": "p"}]}, "unknown harness"),
    ("a bad env name", {"steps": [{"id": "a", "command": ["true"], "env": {"A=B": "1"}}]}, "env name"),
    ("a misspelled argument", {"steps": [{"id": "a", "command": ["true"], "timeout": 5}]}, "unknown argument timeout"),
    ("depends_on in a step", {"steps": [{"id": "a", "command": ["true"], "depends_on": ["x"]}]}, "needs"),
    ("a step id with a dot", {"steps": [{"id": "a.b", "command": ["true"]}]}, "pattern"),
    ("a negative timeout", {"steps": [{"id": "a", "command": ["true"], "timeout_s": -1}]}, "greater than 0"),
    (
        "a key used twice",
        {"steps": [{"id": "a", "command": ["true"], "key": "k"}, {"id": "b", "command": ["true"], "key": "k"}]},
        "both use key",
    ),
    ("a wait over 55 s", {"steps": [{"id": "a", "command": ["true"]}], "wait_s": 56}, "55"),
    ("max_concurrency 0", {"steps": [{"id": "a", "command": ["true"]}], "max_concurrency": 0}, "greater than or equal"),
]


def test_the_graph_check_gives_each_step_everything_it_needs_directly_or_transitively():
    shape = {"d": ["b", "c"], "b": ["a"], "c": ["a"], "a": [], "e": ["d", "a"], "lone": []}
    ancestors = check_graph([Step(id=k, needs=v, command=["true"]) for k, v in shape.items()])
    assert ancestors == {
        "a": frozenset(),
        "b": {"a"},
        "c": {"a"},
        "d": {"a", "b", "c"},
        "e": {"a", "b", "c", "d"},
        "lone": frozenset(),
    }


def test_a_cycle_is_named_from_the_step_given_first_each_needing_the_next():
    steps = [Step(id=k, needs=v, command=["true"]) for k, v in {"z": ["x"], "x": ["y"], "y": ["z"], "w": []}.items()]
    with pytest.raises(InvalidRequestError, match="cycle: z -> x -> y -> z \\(each needs the next\\)"):
        check_graph(steps)


@pytest.mark.parametrize(("arguments", "expected"), [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
async def test_an_invalid_flow_is_refused_with_a_clear_error_and_nothing_written(client, engine, arguments, expected):
    before = await event_count(engine)
    text = await call_error(client, "dispatch_flow", run_id="run-invalid", **arguments)
    assert expected in text
    assert await event_count(engine) == before
    assert (await call(client, "list_effects", run_id="run-invalid"))["effects"] == []
    assert db_rows(engine, "SELECT * FROM flows") == []


async def test_dispatching_a_flow_id_again_returns_that_flow_and_other_arguments_are_a_conflict(client, engine):
    steps = [{"id": "a", "command": py("print(1)")}, {"id": "b", "needs": ["a"], "command": py("print(2)")}]
    first = await call(client, "dispatch_flow", steps=steps, flow_id="flw-same")
    again = await call(client, "dispatch_flow", steps=steps, flow_id="flw-same")
    assert first["status"] == again["status"] == "succeeded"
    assert [s["effect_id"] for s in first["steps"]] == [s["effect_id"] for s in again["steps"]]
    assert await event_count(engine, "FLOW_REQUESTED") == 1
    text = await call_error(client, "dispatch_flow", steps=steps[:1], flow_id="flw-same")
    assert "already names a flow" in text


async def test_an_unknown_flow_id_is_a_tool_error(client):
    assert "unknown flow id" in await call_error(client, "poll_flow", flow_id="flw-nope")


# The fields of the flow record and of its steps as CONTRACT.md (`dispatch_flow`) lists them.
CONTRACT_FLOW_FIELDS = set(
    "flow_id run_id policy status steps started_at finished_at wall_s sum_step_s speedup".split()
)
CONTRACT_STEP_FIELDS = set("step_id effect_id needs status started_at finished_at duration_s exit_code".split())


async def test_dispatch_flow_and_poll_flow_declare_the_whole_flow_record_as_their_output_schema(client):
    model = FlowRecord.model_json_schema()
    model_step = model["$defs"]["FlowStepRecord"]
    assert set(model["properties"]) == set(FlowRecord.model_fields) >= CONTRACT_FLOW_FIELDS
    assert set(model_step["properties"]) == set(FlowStepRecord.model_fields) >= CONTRACT_STEP_FIELDS
    tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    for name in ("dispatch_flow", "poll_flow"):
        schema = tools[name].output_schema
        assert schema is not None, name
        assert schema["properties"] == model["properties"], name
        assert sorted(schema["required"]) == sorted(model["required"]), name
        step_ref = schema["properties"]["steps"]["items"]["$ref"]
        step = schema["$defs"][step_ref.removeprefix("#/$defs/")]
        assert step["properties"] == model_step["properties"], name
        assert sorted(step["required"]) == sorted(model_step["required"]), name


# --- journal and restart --------------------------------------------------------------------------


async def test_a_flow_is_journaled_once_requested_and_once_completed_and_replays_exactly(client, engine, settings):
    flow = await call(
        client,
        "dispatch_flow",
        steps=[{"id": "a", "command": py("print(1)")}, {"id": "b", "needs": ["a"], "command": py("print(2)")}],
        max_concurrency=2,
    )
    events = db_rows(engine, "SELECT * FROM events WHERE type LIKE 'FLOW_%' ORDER BY seq")
    assert [e["type"] for e in events] == ["FLOW_REQUESTED", "FLOW_COMPLETED"]
    requested, completed = (json.loads(e["data"]) for e in events)
    assert requested["flow_id"] == flow["flow_id"] and requested["policy"] == "fail_fast"
    assert requested["max_concurrency"] == 2 and requested["started_at"] == flow["started_at"]
    assert requested["steps"] == [{k: s[k] for k in ("step_id", "effect_id", "needs")} for s in flow["steps"]]
    assert completed == {"flow_id": flow["flow_id"], "status": "succeeded", "finished_at": flow["finished_at"]}
    stored = db_rows(engine, "SELECT * FROM flows")
    assert (await replay_projection(settings.db))["flows"] == stored


async def test_a_flow_survives_a_restart_and_its_waiting_steps_run_after_it(settings):
    settings = replace(settings, keep_queued=True)
    steps = [
        Step(id="long", command=sleep(10, "up")),
        Step(id="b", command=py("print('from b')")),
        Step(id="c", needs=["b"], command=py(SHOW), stdin="got {{steps.b.output}}"),
    ]
    async with open_engine(settings) as engine:
        flow = (await engine.dispatch_flow(FlowRequest(steps=steps, policy="continue", max_concurrency=1))).record
        long = await engine.read_output(flow.steps[0].effect_id, wait_s=10)
        assert long.status == "running" and long.data
    async with open_engine(settings) as engine:
        record = await engine.poll_flow(flow.flow_id, wait_s=10)
        assert record.finished_at is not None
        statuses = {s.step_id: (s.status, s.cancel_reason) for s in record.steps}
        assert statuses == {"long": ("cancelled", "shutdown"), "b": ("succeeded", None), "c": ("succeeded", None)}
        assert record.status == "cancelled"
        c = await engine.read_output(flow.steps[2].effect_id)
        assert json.loads(c.data)["stdin"] == "got from b"
        assert await event_count(engine, "FLOW_COMPLETED") == 1


async def test_a_fail_fast_flow_stopped_by_a_restart_skips_its_waiting_steps_without_starting_them(settings):
    settings = replace(settings, keep_queued=True)
    steps = [
        Step(id="long", command=sleep(10, "up")),
        Step(id="b", command=py("print('from b')")),
        Step(id="c", needs=["b"], command=py("print('from c')")),
    ]
    async with open_engine(settings) as engine:
        flow = (await engine.dispatch_flow(FlowRequest(steps=steps, max_concurrency=1))).record
        assert (await engine.read_output(flow.steps[0].effect_id, wait_s=10)).data
    async with open_engine(settings) as engine:
        record = await engine.poll_flow(flow.flow_id, wait_s=10)
        assert record.finished_at is not None
        assert record.status == "cancelled"
        for step in record.steps[1:]:
            assert step.status == "skipped" and step.started_at is None and "fail_fast" in (step.error or "")


async def test_a_flow_whose_steps_all_ended_while_the_server_was_down_is_completed_at_start(settings):
    flow_id, effect_id, run_id = "flw-offline", new_id("eff_"), "run-offline"
    spec = EffectSpec(kind="command", command=["true"], group=flow_id, flow_id=flow_id, step_id="a")
    finished = now_iso()
    async with Journal.open(settings.db) as journal:
        await journal.append(
            Event("RUN_CREATED", run_id, None, {"created_at": finished}),
            Event(
                "FLOW_REQUESTED",
                run_id,
                None,
                {
                    "flow_id": flow_id,
                    "policy": "fail_fast",
                    "max_concurrency": None,
                    "started_at": finished,
                    "steps": [{"step_id": "a", "effect_id": effect_id, "needs": []}],
                },
            ),
            Event(
                "EFFECT_REQUESTED", run_id, effect_id, {"spec": spec.model_dump(mode="json"), "created_at": finished}
            ),
            Event("EFFECT_RESOLVED", run_id, effect_id, {"finished_at": finished, "exit_code": 0, "result": None}),
        )
    async with open_engine(settings) as engine:
        record = await engine.poll_flow(flow_id)
        assert record.status == "succeeded" and record.finished_at == finished
        [row] = db_rows(engine, "SELECT * FROM flows WHERE flow_id = ?", flow_id)
        assert row["status"] == "succeeded" and row["finished_at"] == finished
        assert await event_count(engine, "FLOW_COMPLETED") == 1


# --- the Python API -------------------------------------------------------------------------------


async def test_the_sync_run_wrapper_runs_a_flow_from_plain_code(tmp_path: Path):
    steps = [
        {"id": "a", "command": py("print('one')")},
        {"id": "b", "needs": ["a"], "command": py(SHOW), "stdin": "{{steps.a.output}}"},
    ]
    db = tmp_path / "sync.db"
    record = await anyio.to_thread.run_sync(lambda: run(steps, db=db, allow_any_command=True))
    assert record.status == "succeeded" and [s.status for s in record.steps] == ["succeeded", "succeeded"]
    log = db.parent / f"{db.stem}.output" / f"{record.steps[1].effect_id}.log"
    assert json.loads(log.read_text())["stdin"] == "one"


async def test_run_flow_returns_the_finished_record_on_an_open_engine(engine):
    record = await run_flow(engine, [Step(id="a", command=py("print(1)"))], run_id="run-api")
    assert record.status == "succeeded" and record.run_id == "run-api" and record.wall_s is not None


async def test_program_code_awaiting_an_effect_cancelled_elsewhere_gets_the_cancel_reason(client, engine):
    record = await call(client, "dispatch_effect", command=sleep(10, "up"), background=True)
    caught: list[EffectCancelledError] = []

    async def wait_for_it() -> None:
        try:
            await await_effect(engine, record["effect_id"], timeout_s=20)
        except EffectCancelledError as exc:
            caught.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(wait_for_it)
        await call(client, "stream_effect", effect_id=record["effect_id"], wait_s=10)
        await call(client, "cancel_effect", effect_id=record["effect_id"], reason="enough")
    assert caught and caught[0].cancel_reason == "user" and caught[0].cancel_message == "enough"


async def test_run_effect_returns_a_success_and_raises_on_a_failure(engine):
    done = await run_effect(engine, command=py("print('ok')"))
    assert done.status == "succeeded" and done.output_tail == "ok\n"
    with pytest.raises(EffectFailedError) as failed:
        await run_effect(engine, command=py("import sys; sys.exit(3)"))
    assert failed.value.record.exit_code == 3


# --- over real stdio ------------------------------------------------------------------------------


async def test_dispatch_flow_works_over_stdio(tmp_path: Path):
    async with Client(stdio_params(tmp_path / "journal.db", "--allow-any-command"), read_timeout_seconds=70) as c:
        flow = await call(
            c,
            "dispatch_flow",
            steps=[
                {"id": "a", "command": py("print('alpha')")},
                {"id": "b", "needs": ["a"], "command": sleep(0.3)},
                {"id": "c", "needs": ["a"], "command": sleep(0.3)},
                {"id": "d", "needs": ["b", "c"], "command": py(SHOW, "{{steps.a.output}}")},
            ],
        )
        assert flow["status"] == "succeeded"
        d = steps_by_id(flow)["d"]["effect_id"]
        assert json.loads(await output_of(c, d))["argv"] == ["alpha"]
        assert (await call(c, "poll_flow", flow_id=flow["flow_id"]))["speedup"] is not None


# --- the client example and the benchmark, run as programs ----------------------------------------


async def run_script(*argv: str, cwd: Path) -> str:
    with anyio.fail_after(60):
        result = await anyio.run_process([sys.executable, *argv], cwd=cwd, check=False)
    out = result.stdout.decode()
    assert result.returncode == 0, f"exit {result.returncode}\n{out}\n{result.stderr.decode()}"
    return out


async def test_the_flow_timeline_example_draws_the_middle_steps_side_by_side(tmp_path: Path):
    out = await run_script(str(REPO / "client_examples" / "flow_timeline.py"), cwd=tmp_path)
    bars = {m[1]: m[2] for m in re.finditer(r"^(\w+)\s*\|([ █]+)\|", out, re.M)}
    assert sorted(bars) == ["a", "b", "c", "d"], out
    spans = {step: (bar.index("█"), bar.rindex("█")) for step, bar in bars.items()}
    assert abs(spans["b"][0] - spans["c"][0]) <= 1 and min(spans["b"][0], spans["c"][0]) > spans["a"][0], out
    assert spans["d"][0] >= max(spans["b"][1], spans["c"][1]), out
    assert "speedup" in out


@pytest.mark.slow
async def test_the_flow_benchmark_prints_both_wall_times_and_their_ratio(tmp_path: Path):
    args = ("--layers", "2", "--width", "3", "--step-s", "0.05")
    out = await run_script(str(REPO / "benchmarks" / "bench_flows.py"), *args, cwd=tmp_path)
    assert re.search(r"as one flow:\s+[\d.]+ s wall", out), out
    assert re.search(r"one step at a time:\s+[\d.]+ s wall", out), out
    assert re.search(r"ratio one-at-a-time / flow:\s+[\d.]+x", out), out


async def test_a_flow_step_and_a_dispatch_racing_for_one_key_never_both_get_it(client):
    async def dispatch() -> object:
        return await client.call_tool(
            "dispatch_effect", {"command": py("pass"), "run_id": "race", "key": "K", "background": True}
        )

    async def flow() -> object:
        step = {"id": "a", "command": py("pass"), "key": "K"}
        return await client.call_tool("dispatch_flow", {"steps": [step], "run_id": "race", "background": True})

    outcomes: dict[str, Any] = {}

    async def run(name: str, fn: Any) -> None:
        outcomes[name] = await fn()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "dispatch", dispatch)
        tg.start_soon(run, "flow", flow)
    assert sum(not o.is_error for o in outcomes.values()) == 1, {k: o.content for k, o in outcomes.items()}
    listed = await call(client, "list_effects", run_id="race")
    assert len(listed["effects"]) == 1
