"""Pipes: a need {"step": "a", "pipe": true} starts the step beside `a`, `a`'s output fed to its stdin."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import anyio
import pytest
from mcp import Client

from effectd.config.settings import Settings
from effectd.errors import InvalidRequestError
from effectd.flows.models import Step
from effectd.flows.plan import plan_steps
from tests.helpers.mcp import call, call_error, connected
from tests.helpers.processes import py

pytestmark = pytest.mark.anyio

# Prints N numbered lines, one every DELAY seconds (argv: N DELAY).
PRODUCE = (
    "import sys, time\n"
    "for i in range(int(sys.argv[1])):\n"
    "    print(f'line {i}', flush=True)\n"
    "    time.sleep(float(sys.argv[2]))\n"
)
# Reads stdin line by line, taking DELAY seconds per line, and echoes each (argv: DELAY).
CONSUME = (
    "import sys, time\n"
    "for line in sys.stdin:\n"
    "    time.sleep(float(sys.argv[1]))\n"
    "    print('got', line.strip(), flush=True)\n"
    "print('eof', flush=True)\n"
)
FIRST_LINE = "import sys; print(sys.stdin.readline()[:5])"  # reads one line of stdin and exits


def by_id(flow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["step_id"]: step for step in flow["steps"]}


async def output(client: Client, effect_id: str) -> str:
    return str((await call(client, "stream_effect", effect_id=effect_id, max_bytes=1_000_000))["data"])


async def test_two_piped_one_second_steps_overlap(client: Client):
    flow = await call(
        client,
        "dispatch_flow",
        steps=[
            {"id": "a", "command": py(PRODUCE, "10", "0.1")},
            {"id": "b", "needs": [{"step": "a", "pipe": True}], "command": py(CONSUME, "0.1")},
        ],
    )
    assert flow["status"] == "succeeded", flow
    a, b = by_id(flow)["a"], by_id(flow)["b"]
    assert await output(client, b["effect_id"]) == "".join(f"got line {i}\n" for i in range(10)) + "eof\n"
    assert b["started_at"] < a["finished_at"], "b waited for a to end"
    assert a["duration_s"] >= 0.9 and b["duration_s"] >= 0.9
    # a | b takes about the longer of the two, not their sum
    assert flow["wall_s"] < 0.8 * (a["duration_s"] + b["duration_s"]), flow
    record = await call(client, "poll_effect", effect_id=b["effect_id"])
    assert record["depends_on"] == [a["effect_id"]]


async def test_a_consumer_that_exits_early_does_not_hang_the_producer(client: Client):
    big = "import sys\nfor i in range(200000):\n    sys.stdout.write('x' * 99 + '\\n')\nprint('producer done')\n"
    with anyio.fail_after(30):
        flow = await call(
            client,
            "dispatch_flow",
            steps=[
                {"id": "a", "command": py(big)},
                {
                    "id": "b",
                    "needs": [{"step": "a", "pipe": True}],
                    "command": py("import sys; print(sys.stdin.readline()[:5])"),
                },
            ],
        )
    assert flow["status"] == "succeeded", flow
    assert (await output(client, by_id(flow)["b"]["effect_id"])) == "xxxxx\n"
    assert (await call(client, "poll_effect", effect_id=by_id(flow)["a"]["effect_id"]))["output_bytes"] > 19_000_000


async def test_a_producer_that_fails_under_fail_fast_cancels_the_consumer(client: Client):
    started = time.monotonic()
    flow = await call(
        client,
        "dispatch_flow",
        steps=[
            {"id": "a", "command": py("import sys, time; print('partial', flush=True); time.sleep(0.5); sys.exit(2)")},
            {
                "id": "b",
                "needs": [{"step": "a", "pipe": True}],
                "command": py("import sys, time; print(sys.stdin.readline(), flush=True); time.sleep(30)"),
            },
        ],
    )
    assert time.monotonic() - started < 15
    a, b = by_id(flow)["a"], by_id(flow)["b"]
    assert a["status"] == "failed" and b["status"] == "cancelled" and b["cancel_reason"] == "fail_fast"
    assert "partial" in await output(client, b["effect_id"])


async def test_under_continue_the_consumer_of_a_failed_producer_reads_to_eof_and_ends_on_its_own(client: Client):
    flow = await call(
        client,
        "dispatch_flow",
        policy="continue",
        steps=[
            {"id": "a", "command": py("import sys; print('one', flush=True); sys.exit(3)")},
            {"id": "b", "needs": [{"step": "a", "pipe": True}], "command": py(CONSUME, "0")},
        ],
    )
    b = by_id(flow)["b"]
    assert by_id(flow)["a"]["status"] == "failed"
    assert b["status"] == "succeeded" and await output(client, b["effect_id"]) == "got one\neof\n"


async def test_bad_pipes_are_refused_before_anything_is_written(client: Client):
    a = {"id": "a", "command": py("print(1)")}
    c = {"id": "c", "command": py("print(2)")}
    both = await call_error(
        client,
        "dispatch_flow",
        steps=[a, {"id": "b", "needs": [{"step": "a", "pipe": True}], "stdin": "x", "command": py("")}],
    )
    assert "both `stdin` and a piped need" in both
    two = await call_error(
        client,
        "dispatch_flow",
        steps=[
            a,
            c,
            {"id": "b", "needs": [{"step": "a", "pipe": True}, {"step": "c", "pipe": True}], "command": py("")},
        ],
    )
    assert "at most one piped need" in two
    templated = await call_error(
        client,
        "dispatch_flow",
        steps=[a, {"id": "b", "needs": [{"step": "a", "pipe": True}], "command": py("", "{{steps.a.output}}")}],
    )
    assert "piped into it" in templated
    assert (await call(client, "list_effects"))["effects"] == []


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


@pytest.mark.slow
async def test_a_100_mb_stream_through_a_pipe_keeps_the_server_rss_bounded(settings: Settings):
    produce = "import sys\nblock = b'y' * (1 << 20)\nfor _ in range(100):\n    sys.stdout.buffer.write(block)\n"
    # A slow consumer: reads 64 KiB at a time with a pause every MiB; prints what it got.
    consume = (
        "import sys, time\nn = 0\nwhile chunk := sys.stdin.buffer.read(65536):\n"
        "    n += len(chunk)\n    if n % (1 << 20) == 0: time.sleep(0.005)\nprint(n)\n"
    )
    async with connected(settings, output_limit_bytes=200 << 20) as (_, client):
        before = rss_kib()
        peak = before
        done = anyio.Event()

        async def watch() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_kib())
                await anyio.sleep(0.05)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            flow = await call(
                client,
                "dispatch_flow",
                wait_s=55,
                steps=[
                    {"id": "a", "command": py(produce)},
                    {"id": "b", "needs": [{"step": "a", "pipe": True}], "command": py(consume)},
                ],
            )
            done.set()
        assert flow["status"] == "succeeded", flow
        assert (await output(client, by_id(flow)["b"]["effect_id"])).strip() == str(100 << 20)
        assert (peak - before) < 40 * 1024, f"the server grew by {(peak - before) // 1024} MiB for a 100 MiB stream"


async def test_a_piped_flow_sent_again_with_its_id_is_the_same_flow_and_resumes_whole(client: Client):
    steps = [
        {"id": "a", "command": py(PRODUCE, "3", "0")},
        {"id": "b", "needs": [{"step": "a", "pipe": True}], "command": py(CONSUME, "0")},
    ]
    first = await call(client, "dispatch_flow", steps=steps, flow_id="flw_piped")
    again = await call(client, "dispatch_flow", steps=steps, flow_id="flw_piped")
    assert first["status"] == "succeeded" and again["steps"] == first["steps"]
    resumed = await call(client, "dispatch_flow", steps=steps, resume="flw_piped")
    assert resumed["cached_steps"] == 2
    b = by_id(resumed)["b"]["effect_id"]
    assert await output(client, b) == "got line 0\ngot line 1\ngot line 2\neof\n"


def test_a_pipe_is_refused_on_a_server_whose_runner_is_not_local(settings: Settings) -> None:
    # The Ray runner does not feed a piped step's stdin: refused at dispatch, naming the runner.
    steps = [
        Step.model_validate({"id": "a", "command": py("print(1)")}),
        Step.model_validate({"id": "b", "needs": [{"step": "a", "pipe": True}], "command": py("")}),
    ]
    plan_steps(settings, steps, "flw_local")  # the local runner takes it
    with pytest.raises(InvalidRequestError, match="pipes need the local runner .* on 'ray'"):
        plan_steps(replace(settings, runner="ray"), steps, "flw_ray")
