"""The effect tools through an in-memory MCP client: dispatch, status transitions, waits, cancels."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime

import anyio
import pytest

from tests.helpers.mcp import call, call_error, connected, read_until
from tests.helpers.processes import CHILD_WITH_GRANDCHILD, SLEEP, pid_alive, py

pytestmark = pytest.mark.anyio


def when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.removesuffix("Z") + "+00:00")


async def test_a_foreground_dispatch_waits_and_returns_the_finished_record(client):
    record = await call(
        client, "dispatch_effect", command=py("print('out'); import sys; print('err', file=sys.stderr)")
    )
    assert record["status"] == "succeeded"
    assert record["exit_code"] == 0 and record["signal"] is None and record["error"] is None
    assert record["output_tail"] == "out\nerr\n"
    assert record["output_bytes"] == 8 and record["output_truncated"] is False
    assert record["effect_id"].startswith("eff_") and record["run_id"].startswith("run_")
    assert when(record["created_at"]) <= when(record["started_at"]) <= when(record["finished_at"])
    assert record["duration_s"] == pytest.approx(
        (when(record["finished_at"]) - when(record["started_at"])).total_seconds(), abs=1e-5
    )
    assert record["pid"] is None


async def test_ten_background_effects_of_half_a_second_run_side_by_side(client):
    began = time.monotonic()
    ids = []
    for _ in range(10):
        record = await call(client, "dispatch_effect", command=py(SLEEP, "0.5"), background=True, group="ten")
        assert record["status"] in ("queued", "running")
        ids.append(record["effect_id"])
    outcome = await call(client, "await_group", group="ten", timeout_s=30)
    wall = time.monotonic() - began
    assert outcome["complete"] and not outcome["timed_out"]
    assert sorted(r["effect_id"] for r in outcome["done"]) == sorted(ids)
    assert {r["status"] for r in outcome["done"]} == {"succeeded"}
    assert wall < 4.0, f"ten 0.5 s effects took {wall:.2f} s together"


async def test_a_dependent_starts_after_its_dependency_and_is_skipped_when_it_fails(client):
    first = await call(client, "dispatch_effect", command=py(SLEEP, "0.4"), background=True)
    after = await call(client, "dispatch_effect", command=py("pass"), background=True, depends_on=[first["effect_id"]])
    assert after["status"] == "pending"
    broken = await call(client, "dispatch_effect", command=py("raise SystemExit(4)"), background=True)
    skipped = await call(
        client, "dispatch_effect", command=py("pass"), background=True, depends_on=[broken["effect_id"]]
    )
    transitive = await call(
        client, "dispatch_effect", command=py("pass"), background=True, depends_on=[skipped["effect_id"]]
    )
    ids = [e["effect_id"] for e in (first, after, broken, skipped, transitive)]
    outcome = await call(client, "await_group", effect_ids=ids, timeout_s=30)
    records = {r["effect_id"]: r for r in outcome["done"]}
    assert records[after["effect_id"]]["status"] == "succeeded"
    assert when(records[after["effect_id"]]["started_at"]) >= when(records[first["effect_id"]]["finished_at"])
    assert records[broken["effect_id"]]["exit_code"] == 4
    for effect_id in (skipped["effect_id"], transitive["effect_id"]):
        assert records[effect_id]["status"] == "skipped"
        assert records[effect_id]["started_at"] is None
    assert broken["effect_id"] in records[skipped["effect_id"]]["error"]


async def test_a_dependency_that_already_failed_makes_the_new_effect_skipped_at_once(client):
    broken = await call(client, "dispatch_effect", command=py("raise SystemExit(1)"))
    record = await call(
        client, "dispatch_effect", command=py("pass"), background=True, depends_on=[broken["effect_id"]]
    )
    assert record["status"] == "skipped"


async def test_cancelling_a_dependency_skips_its_dependents(client):
    slow = await call(client, "dispatch_effect", command=py(SLEEP, "30"), background=True)
    child = await call(client, "dispatch_effect", command=py("pass"), background=True, depends_on=[slow["effect_id"]])
    await call(client, "cancel_effect", effect_id=slow["effect_id"], grace_s=0.2)
    outcome = await call(client, "await_group", effect_ids=[child["effect_id"]], timeout_s=10)
    assert outcome["done"][0]["status"] == "skipped"


async def test_cancel_kills_a_child_that_ignores_sigterm_and_its_grandchild(client):
    record = await call(client, "dispatch_effect", command=py(CHILD_WITH_GRANDCHILD), background=True)
    text = await read_until(client, record["effect_id"], "pids")
    pids = [int(p) for p in text.split("pids", 1)[1].split()[:2]]
    began = time.monotonic()
    cancelled = await call(client, "cancel_effect", effect_id=record["effect_id"], reason="runaway", grace_s=0.2)
    took = time.monotonic() - began
    assert cancelled["status"] == "cancelled"
    assert cancelled["cancel_reason"] == "user" and cancelled["cancel_message"] == "runaway"
    assert cancelled["signal"] == 9
    assert not [p for p in pids if pid_alive(p)], "cancel_effect returned while a process of the group lived"
    assert took < 3


async def test_a_timeout_cancels_with_reason_timeout(client):
    record = await call(client, "dispatch_effect", command=py(SLEEP, "60"), timeout_s=0.3, grace_s=0.2)
    assert record["status"] == "cancelled" and record["cancel_reason"] == "timeout"
    assert record["duration_s"] < 3


async def test_an_idle_timeout_cancels_a_silent_effect_with_reason_idle_timeout(client):
    code = "import time; print('started', flush=True); time.sleep(60)"
    record = await call(client, "dispatch_effect", command=py(code), idle_timeout_s=0.4, grace_s=0.2)
    assert record["status"] == "cancelled" and record["cancel_reason"] == "idle_timeout"
    assert "started" in record["output_tail"]


async def test_an_effect_that_keeps_printing_outlives_its_idle_timeout(client):
    code = "import time\nfor i in range(8):\n    print(i, flush=True); time.sleep(0.1)"
    record = await call(client, "dispatch_effect", command=py(code), idle_timeout_s=0.6)
    assert record["status"] == "succeeded"


async def test_the_timeout_counts_from_the_start_of_the_process_not_from_dispatch(settings):
    async with connected(settings, max_concurrency=1) as (_, client):
        await call(client, "dispatch_effect", command=py(SLEEP, "0.8"), background=True)
        waiting = await call(client, "dispatch_effect", command=py(SLEEP, "0.2"), background=True, timeout_s=0.6)
        assert waiting["status"] == "queued"
        outcome = await call(client, "await_group", effect_ids=[waiting["effect_id"]], timeout_s=20)
    assert outcome["done"][0]["status"] == "succeeded"


async def test_await_any_with_the_cursor_yields_every_completion_exactly_once(client):
    ids = []
    for seconds in ("0.1", "0.5", "0.9"):
        ids.append(
            (await call(client, "dispatch_effect", command=py(SLEEP, seconds), background=True, group="g"))["effect_id"]
        )
    seen, cursor, calls = [], 0, 0
    with anyio.fail_after(30):
        while True:
            outcome = await call(client, "await_group", group="g", mode="any", timeout_s=20, cursor=cursor)
            calls += 1
            assert outcome["done"] and not outcome["timed_out"]
            seen += [r["effect_id"] for r in outcome["done"]]
            assert outcome["cursor"] > cursor
            cursor = outcome["cursor"]
            if outcome["complete"]:
                break
    assert seen == ids
    again = await call(client, "await_group", group="g", mode="any", timeout_s=0.2, cursor=cursor)
    assert again["done"] == [] and again["complete"] is True


async def test_await_all_that_times_out_says_what_is_still_pending(client):
    slow = await call(client, "dispatch_effect", command=py(SLEEP, "30"), background=True, group="slow")
    quick = await call(client, "dispatch_effect", command=py("pass"), background=True, group="slow")
    await call(client, "await_group", effect_ids=[quick["effect_id"]], timeout_s=10)
    outcome = await call(client, "await_group", group="slow", mode="all", timeout_s=0.3)
    assert outcome["timed_out"] is True and outcome["complete"] is False
    assert outcome["pending"] == [slow["effect_id"]]
    assert [r["effect_id"] for r in outcome["done"]] == [quick["effect_id"]]
    await call(client, "cancel_effect", effect_id=slow["effect_id"], grace_s=0.1)


async def test_await_group_names_an_unknown_group_or_effect(client):
    assert "nosuch" in await call_error(client, "await_group", group="nosuch", timeout_s=0)
    assert "eff_nope" in await call_error(client, "await_group", effect_ids=["eff_nope"], timeout_s=0)
    assert "exactly one" in await call_error(client, "await_group", timeout_s=0)


async def test_stream_returns_output_while_running_and_everything_after_it_ended(client):
    # One write per line (print writes the text and the newline apart, and a waiting reader may get
    # the first alone).
    code = "import os, time; os.write(1, b'one\\n'); time.sleep(0.5); os.write(1, b'two\\n')"
    record = await call(client, "dispatch_effect", command=py(code), background=True)
    first = await call(client, "stream_effect", effect_id=record["effect_id"], wait_s=10)
    assert first["data"] == "one\n" and first["eof"] is False and first["status"] == "running"
    rest, cursor = "", first["cursor"]
    with anyio.fail_after(20):
        while True:
            chunk = await call(client, "stream_effect", effect_id=record["effect_id"], cursor=cursor, wait_s=10)
            rest += chunk["data"]
            cursor = chunk["cursor"]
            if chunk["eof"]:
                break
    assert rest == "two\n"
    whole = await call(client, "stream_effect", effect_id=record["effect_id"])
    assert whole == {
        "effect_id": record["effect_id"],
        "data": "one\ntwo\n",
        "cursor": 8,
        "eof": True,
        "status": "succeeded",
    }


async def test_stream_never_splits_a_utf8_character(client):
    text = "héllo wörld ✓ 𝄞 ünïcödé\n" * 3
    record = await call(client, "dispatch_effect", command=py(f"import sys; sys.stdout.write({text!r})"))
    assert record["status"] == "succeeded"
    for max_bytes in (1, 2, 3, 5, 7):
        pieces, cursor = [], 0
        while True:
            chunk = await call(
                client, "stream_effect", effect_id=record["effect_id"], cursor=cursor, max_bytes=max_bytes
            )
            pieces.append(chunk["data"])
            cursor = chunk["cursor"]
            if chunk["eof"]:
                break
        assert "".join(pieces) == text
        assert all("\ufffd" not in piece for piece in pieces)


async def test_output_that_is_not_utf8_comes_back_with_replacement_characters(client):
    record = await call(
        client, "dispatch_effect", command=py("import sys; sys.stdout.buffer.write(b'ok \\xff\\xfe end\\n')")
    )
    assert record["output_tail"] == "ok \ufffd\ufffd end\n"
    chunk = await call(client, "stream_effect", effect_id=record["effect_id"])
    assert chunk["data"] == "ok \ufffd\ufffd end\n" and chunk["eof"] is True


async def test_output_beyond_the_limit_is_cut_and_flagged(settings):
    async with connected(settings, output_limit_bytes=1000) as (_, client):
        record = await call(client, "dispatch_effect", command=py("import sys; sys.stdout.write('x' * 100000)"))
    assert record["status"] == "succeeded"
    assert record["output_bytes"] == 1000 and record["output_truncated"] is True


async def test_json_in_the_result_file_becomes_the_result_and_bad_json_is_ignored(client):
    good = "import json, os; json.dump({'answer': 42}, open(os.environ['EFFECTD_RESULT_FILE'], 'w'))"
    bad = "import os; open(os.environ['EFFECTD_RESULT_FILE'], 'w').write('{not json')"
    assert (await call(client, "dispatch_effect", command=py(good)))["result"] == {"answer": 42}
    record = await call(client, "dispatch_effect", command=py(bad))
    assert record["status"] == "succeeded" and record["result"] is None


async def test_an_effect_sees_its_ids_env_cwd_and_stdin(client, tmp_path):
    code = (
        "import json, os, sys; print(json.dumps({'id': os.environ['EFFECTD_EFFECT_ID'], "
        "'run': os.environ['EFFECTD_RUN_ID'], 'mine': os.environ['MINE'], 'cwd': os.getcwd(), "
        "'stdin': sys.stdin.read()}))"
    )
    record = await call(
        client, "dispatch_effect", command=py(code), env={"MINE": "yes"}, cwd=str(tmp_path), stdin="fed", run_id="r-env"
    )
    seen = json.loads(record["output_tail"])
    assert seen == {"id": record["effect_id"], "run": "r-env", "mine": "yes", "cwd": str(tmp_path), "stdin": "fed"}


async def test_an_effect_without_stdin_reads_end_of_file_at_once(client):
    record = await call(client, "dispatch_effect", command=py("import sys; print(repr(sys.stdin.read()))"), wait_s=10)
    assert record["status"] == "succeeded" and record["output_tail"] == "''\n"


async def test_non_zero_exits_signals_and_missing_executables_fail_with_the_reason(client, tmp_path):
    exited = await call(client, "dispatch_effect", command=py("raise SystemExit(7)"))
    assert (exited["status"], exited["exit_code"]) == ("failed", 7)
    killed = await call(
        client, "dispatch_effect", command=py("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    )
    assert killed["status"] == "failed" and killed["signal"] == 9 and "SIGKILL" in killed["error"]
    vanished = await call(client, "dispatch_effect", command=[str(tmp_path / "no-such-program")])
    assert vanished["status"] == "failed" and "no-such-program" in vanished["error"]
    assert vanished["started_at"] is None


async def test_a_failing_effect_is_retried_up_to_max_attempts(client, tmp_path):
    counter = tmp_path / "count"
    code = (
        f"import pathlib, sys; p = pathlib.Path({str(counter)!r}); n = int(p.read_text()) + 1 if p.exists() else 1; "
        "p.write_text(str(n)); print('attempt', n); sys.exit(0 if n == 3 else 1)"
    )
    record = await call(client, "dispatch_effect", command=py(code), max_attempts=3, retry_backoff_s=0.05)
    assert record["status"] == "succeeded" and record["attempt"] == 3
    assert "attempt 3" in record["output_tail"]


async def test_a_cancelled_effect_is_not_retried(client):
    record = await call(client, "dispatch_effect", command=py(SLEEP, "30"), background=True, max_attempts=5)
    cancelled = await call(client, "cancel_effect", effect_id=record["effect_id"], grace_s=0.1)
    assert cancelled["status"] == "cancelled" and cancelled["attempt"] == 1


async def test_a_queued_effect_is_cancelled_at_once_and_never_starts(settings):
    async with connected(settings, max_concurrency=1) as (_, client):
        running = await call(client, "dispatch_effect", command=py(SLEEP, "30"), background=True)
        queued = await call(client, "dispatch_effect", command=py("pass"), background=True)
        assert queued["status"] == "queued"
        cancelled = await call(client, "cancel_effect", effect_id=queued["effect_id"])
        assert cancelled["status"] == "cancelled" and cancelled["started_at"] is None
        await call(client, "cancel_effect", effect_id=running["effect_id"], grace_s=0.1)


async def test_the_concurrency_limit_holds_and_the_queue_is_first_in_first_out(settings):
    async with connected(settings, max_concurrency=2) as (_, client):
        ids = []
        for _ in range(5):
            record = await call(client, "dispatch_effect", command=py(SLEEP, "0.3"), background=True, group="fifo")
            ids.append(record["effect_id"])
        outcome = await call(client, "await_group", group="fifo", timeout_s=30)
    records = {r["effect_id"]: r for r in outcome["done"]}
    starts = [when(records[i]["started_at"]) for i in ids]
    finishes = [when(r["finished_at"]) for r in outcome["done"]]
    # Slots are granted in dispatch order, but two slots freed together may finish spawning in either
    # order, so the start stamps alone can tie the wrong way round. First in, first out means the i-th
    # effect (i >= 2) takes the slot that the (i - 1)-th release freed: i - 1 effects ended before it.
    for i in range(2, 5):
        ended_before = sum(finished <= starts[i] for finished in finishes)
        assert ended_before >= i - 1, f"effect {i} started before its turn in the queue"
    assert max(starts[:2]) < min(starts[2:])
    assert most_at_once(outcome["done"]) == 2


def most_at_once(records) -> int:
    """The largest number of records whose [started_at, finished_at] spans overlap at one moment."""
    marks = sorted(
        [(when(r["started_at"]), 1) for r in records] + [(when(r["finished_at"]), -1) for r in records],
        key=lambda mark: (mark[0], mark[1]),
    )
    running = peak = 0
    for _, step in marks:
        running += step
        peak = max(peak, running)
    return peak


async def test_a_group_limit_caps_its_own_effects(client):
    for _ in range(3):
        await call(
            client,
            "dispatch_effect",
            command=py(SLEEP, "0.3"),
            background=True,
            group="capped",
            group_max_concurrency=1,
        )
    outcome = await call(client, "await_group", group="capped", timeout_s=30)
    assert most_at_once(outcome["done"]) == 1


async def test_the_same_key_returns_the_same_effect_and_other_arguments_are_refused(client):
    first = await call(client, "dispatch_effect", command=py(SLEEP, "0.2"), background=True, run_id="r", key="k")
    again = await call(client, "dispatch_effect", command=py(SLEEP, "0.2"), background=True, run_id="r", key="k")
    assert again["effect_id"] == first["effect_id"]
    message = await call_error(
        client, "dispatch_effect", command=py(SLEEP, "0.3"), background=True, run_id="r", key="k"
    )
    assert "'k'" in message and first["effect_id"] in message
    listed = await call(client, "list_effects", run_id="r")
    assert [r["effect_id"] for r in listed["effects"]] == [first["effect_id"]]


async def test_list_effects_filters_by_run_group_and_status_newest_first(client):
    a = await call(client, "dispatch_effect", command=py("pass"), run_id="r1", group="x")
    b = await call(client, "dispatch_effect", command=py("raise SystemExit(1)"), run_id="r1", group="y")
    c = await call(client, "dispatch_effect", command=py("pass"), run_id="r2", group="x")
    ids = lambda listed: [r["effect_id"] for r in listed["effects"]]  # noqa: E731
    assert ids(await call(client, "list_effects", run_id="r1")) == [b["effect_id"], a["effect_id"]]
    assert ids(await call(client, "list_effects", group="x")) == [c["effect_id"], a["effect_id"]]
    assert ids(await call(client, "list_effects", status=["failed"])) == [b["effect_id"]]
    assert ids(await call(client, "list_effects", limit=1)) == [c["effect_id"]]
    summary = (await call(client, "list_effects", run_id="r1"))["summary"]
    assert summary["by_status"] == {"succeeded": 1, "failed": 1}


async def test_cancel_group_cancels_everything_left_in_the_group(client):
    done = await call(client, "dispatch_effect", command=py("pass"), group="batch")
    slow = [
        (await call(client, "dispatch_effect", command=py(SLEEP, "30"), background=True, group="batch"))["effect_id"]
        for _ in range(3)
    ]
    result = await call(client, "cancel_group", group="batch", reason="enough")
    assert sorted(result["cancelled"]) == sorted(slow)
    statuses = {r["effect_id"]: (r["status"], r["cancel_message"]) for r in result["effects"]}
    assert statuses[done["effect_id"]] == ("succeeded", None)
    assert all(statuses[i] == ("cancelled", "enough") for i in slow)
    assert "nosuch" in await call_error(client, "cancel_group", group="nosuch")


async def test_cancelling_a_finished_effect_returns_it_unchanged(client):
    record = await call(client, "dispatch_effect", command=py("pass"))
    again = await call(client, "cancel_effect", effect_id=record["effect_id"], reason="late")
    assert again["status"] == "succeeded" and again["cancel_message"] is None


async def test_a_foreground_dispatch_reports_the_latest_output_line_as_progress(client):
    messages: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if message:
            messages.append(message)

    code = "import time\nfor i in range(3):\n    print(f'step {i}', flush=True); time.sleep(0.2)"
    result = await client.call_tool("dispatch_effect", {"command": py(code)}, progress_callback=on_progress)
    assert not result.is_error
    assert "step 0" in messages and messages[-1] == "step 2"


async def test_a_client_that_abandons_a_foreground_call_cancels_its_effect(engine, client):
    code = "import os, time; print(os.getpid(), flush=True); time.sleep(60)"
    with anyio.move_on_after(1.0):
        await client.call_tool("dispatch_effect", {"command": py(code), "wait_s": 30, "run_id": "abandon"})
    with anyio.fail_after(10):
        while True:
            listed = await call(client, "list_effects", run_id="abandon")
            if listed["effects"] and listed["effects"][0]["status"] == "cancelled":
                break
            await anyio.sleep(0.05)
    record = listed["effects"][0]
    assert record["cancel_reason"] == "client_cancelled"
    assert not pid_alive(int(record["output_tail"].split()[0]))


async def test_a_foreground_dispatch_returns_after_wait_s_with_the_effect_still_running(client):
    began = time.monotonic()
    record = await call(client, "dispatch_effect", command=py(SLEEP, "30"), wait_s=0.3)
    assert record["status"] == "running" and record["pid"] is not None
    assert time.monotonic() - began < 5
    await call(client, "cancel_effect", effect_id=record["effect_id"], grace_s=0.1)


async def test_a_silent_running_effect_is_flagged_stalled(settings):
    async with connected(settings, stall_after_s=0.2) as (_, client):
        record = await call(client, "dispatch_effect", command=py(SLEEP, "30"), wait_s=0.6)
        assert record["status"] == "running" and record["stalled"] is True
        await call(client, "cancel_effect", effect_id=record["effect_id"], grace_s=0.1)


async def test_list_harnesses_shows_the_builtin_profiles_and_whether_they_can_run(client):
    listed = await call(client, "list_harnesses")
    names = {h["name"]: h for h in listed["harnesses"]}
    assert {"claude", "codex", "gemini", "pi", "opencode"} <= set(names)
    assert names["claude"]["parser"] == "claude"
    assert isinstance(names["claude"]["available"], bool)


async def test_an_effect_started_by_a_process_group_leader_that_exits_leaves_no_daemon_behind(client):
    code = (
        "import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
        "stdout=subprocess.DEVNULL); print(p.pid, flush=True)"
    )
    record = await call(client, "dispatch_effect", command=py(code), grace_s=0.2)
    assert record["status"] == "succeeded"
    assert not pid_alive(int(record["output_tail"].split()[0]))


async def test_the_python_running_the_tests_is_what_effects_run(client):
    record = await call(client, "dispatch_effect", command=py("import sys; print(sys.executable)"))
    assert record["output_tail"].strip() == sys.executable


async def test_a_dependent_is_skipped_as_soon_as_one_dependency_fails_while_another_still_runs(client):
    slow = await call(client, "dispatch_effect", command=py(SLEEP, "30"), background=True)
    broken = await call(client, "dispatch_effect", command=py("raise SystemExit(2)"), background=True)
    child = await call(
        client,
        "dispatch_effect",
        command=py("pass"),
        background=True,
        depends_on=[slow["effect_id"], broken["effect_id"]],
    )
    outcome = await call(client, "await_group", effect_ids=[child["effect_id"]], timeout_s=10)
    assert outcome["done"][0]["status"] == "skipped"
    assert (await call(client, "poll_effect", effect_id=slow["effect_id"]))["status"] == "running"
    await call(client, "cancel_effect", effect_id=slow["effect_id"], grace_s=0.1)


LEADER_WITH_STUBBORN_GRANDCHILD = """
import os, subprocess, sys, time
stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"
grandchild = subprocess.Popen([sys.executable, "-c", stubborn])
time.sleep(0.3)  # let the grandchild install its handler
print(f"pids {os.getpid()} {grandchild.pid}", flush=True)
time.sleep(120)
"""


async def test_the_grace_of_a_cancel_covers_the_whole_group_not_only_its_leader(client):
    record = await call(
        client, "dispatch_effect", command=py(LEADER_WITH_STUBBORN_GRANDCHILD), background=True, grace_s=20
    )
    text = await read_until(client, record["effect_id"], "pids")
    pids = [int(p) for p in text.split("pids", 1)[1].split()[:2]]
    began = time.monotonic()
    cancelled = await call(client, "cancel_effect", effect_id=record["effect_id"], grace_s=0.5)
    took = time.monotonic() - began
    assert cancelled["status"] == "cancelled"
    assert took < 3, f"the cancel took {took:.1f} s: the grandchild got a second grace (the effect's 20 s)"
    assert not [p for p in pids if pid_alive(p)]


async def test_a_cancel_that_comes_before_the_effect_begins_to_wait_is_not_lost(engine):
    from effectd.model.arguments import EffectRequest

    first = (await engine.dispatch(EffectRequest(command=py(SLEEP, "30")))).record
    second = (await engine.dispatch(EffectRequest(command=py("pass"), depends_on=[first.effect_id]))).record
    with anyio.fail_after(5):  # asked before its task has run at all
        cancelled = await engine.cancel(second.effect_id, message="at once")
    assert cancelled.status == "cancelled"
    assert (await engine.poll(first.effect_id)).status in ("queued", "running")
    await engine.cancel(first.effect_id, grace_s=0.1)
