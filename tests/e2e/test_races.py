"""await_group's race modes with real processes: first_success and quorum, cancel_rest, cursor and timeout."""

from __future__ import annotations

import re

import pytest
from mcp import Client

from tests.helpers.mcp import call, call_error, read_until
from tests.helpers.processes import event_count, pid_alive, py, stdio_params

pytestmark = pytest.mark.anyio

# A loser: starts a grandchild (in its process group), says its pid, and sleeps.
LOSER = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
    "print('grandchild', child.pid, 'up', flush=True)\n"
    "time.sleep(120)\n"
)
WIN_AFTER = "import sys, time; time.sleep(float(sys.argv[1])); print('done', flush=True)"
FAIL_AFTER = "import sys, time; time.sleep(float(sys.argv[1])); sys.exit(3)"


async def start(client: Client, group: str, code: str, *args: str, **more: object) -> dict:
    return await call(client, "dispatch_effect", command=py(code, *args), background=True, group=group, **more)


async def loser(client: Client, group: str) -> tuple[str, list[int]]:
    """A running loser's id and the pids of its process group (leader and grandchild)."""
    record = await start(client, group, LOSER)
    text = await read_until(client, record["effect_id"], " up")
    grandchild = int(re.search(r"grandchild (\d+)", text).group(1))  # type: ignore[union-attr]
    polled = await call(client, "poll_effect", effect_id=record["effect_id"])
    assert polled["status"] == "running" and pid_alive(polled["pid"]) and pid_alive(grandchild)
    return record["effect_id"], [polled["pid"], grandchild]


async def test_first_success_returns_the_winner_and_the_losers_process_groups_are_gone_on_return(client):
    losers = [await loser(client, "race") for _ in range(3)]
    winner = await start(client, "race", WIN_AFTER, "0.3")

    answer = await call(client, "await_group", group="race", mode="first_success", timeout_s=30)

    # Checked at once, with no wait: the call returned after the losers' processes were gone.
    for effect_id, pids in losers:
        assert not any(pid_alive(pid) for pid in pids), f"{effect_id} left {[p for p in pids if pid_alive(p)]}"
    assert answer["satisfied"] is True and answer["timed_out"] is False
    assert [r["effect_id"] for r in answer["winners"]] == [winner["effect_id"]]
    assert answer["complete"] is True and answer["pending"] == []
    records = {r["effect_id"]: r for r in answer["done"]}
    assert set(records) == {winner["effect_id"], *(effect_id for effect_id, _ in losers)}
    assert answer["done"][0]["effect_id"] == winner["effect_id"], "the winner finished first"
    for effect_id, _ in losers:
        assert records[effect_id]["status"] == "cancelled"
        assert records[effect_id]["cancel_reason"] == "superseded"
        assert winner["effect_id"] in records[effect_id]["cancel_message"]
    assert records[winner["effect_id"]]["status"] == "succeeded"


async def test_a_quorum_returns_once_k_succeeded_and_cancels_the_rest_including_waiting_ones(client):
    slow, slow_pids = await loser(client, "q")
    first = await start(client, "q", WIN_AFTER, "0.2")
    broken = await start(client, "q", FAIL_AFTER, "0.1")
    second = await start(client, "q", WIN_AFTER, "0.6")
    waiting = await start(client, "q", "pass", depends_on=[slow])
    assert waiting["status"] == "pending"

    answer = await call(client, "await_group", group="q", mode="quorum", k=2, timeout_s=30)

    assert not any(pid_alive(pid) for pid in slow_pids)
    assert answer["satisfied"] is True and answer["timed_out"] is False
    assert [r["effect_id"] for r in answer["winners"]] == [first["effect_id"], second["effect_id"]]
    records = {r["effect_id"]: r for r in answer["done"]}
    assert records[broken["effect_id"]]["status"] == "failed"
    for effect_id in (slow, waiting["effect_id"]):
        assert (records[effect_id]["status"], records[effect_id]["cancel_reason"]) == ("cancelled", "superseded")
    assert records[waiting["effect_id"]]["started_at"] is None, "a waiting loser never starts"


async def test_a_quorum_that_can_no_longer_be_reached_returns_at_once_and_cancels_nothing(client):
    slow, slow_pids = await loser(client, "hopeless")
    for delay in ("0.1", "0.3"):
        await start(client, "hopeless", FAIL_AFTER, delay)

    answer = await call(client, "await_group", group="hopeless", mode="quorum", k=2, timeout_s=30)

    assert answer["satisfied"] is False and answer["timed_out"] is False and answer["winners"] == []
    assert answer["pending"] == [slow] and answer["complete"] is False
    assert [r["status"] for r in answer["done"]] == ["failed", "failed"]
    polled = await call(client, "poll_effect", effect_id=slow)
    assert polled["status"] == "running" and polled["cancel_reason"] is None
    assert all(pid_alive(pid) for pid in slow_pids), "nothing is cancelled when the quorum cannot be reached"
    await call(client, "cancel_effect", effect_id=slow, grace_s=0.1)


async def test_first_success_where_every_effect_fails_returns_unsatisfied_once_all_ended(client):
    ids = [(await start(client, "all-fail", FAIL_AFTER, d))["effect_id"] for d in ("0.1", "0.2", "0.3")]
    answer = await call(client, "await_group", group="all-fail", mode="first_success", timeout_s=30)
    assert answer["satisfied"] is False and answer["winners"] == [] and answer["timed_out"] is False
    assert answer["complete"] is True and [r["effect_id"] for r in answer["done"]] == ids


async def test_a_timeout_returns_unsatisfied_and_cancels_nothing(client):
    runners = [await loser(client, "slow-race") for _ in range(2)]
    answer = await call(client, "await_group", group="slow-race", mode="first_success", timeout_s=0.5)
    assert answer["timed_out"] is True and answer["satisfied"] is False and answer["winners"] == []
    assert sorted(answer["pending"]) == sorted(effect_id for effect_id, _ in runners) and answer["done"] == []
    for effect_id, pids in runners:
        assert (await call(client, "poll_effect", effect_id=effect_id))["status"] == "running"
        assert all(pid_alive(pid) for pid in pids)
    cancelled = await call(client, "cancel_group", group="slow-race")
    assert {r["cancel_reason"] for r in cancelled["effects"]} == {"user"}


async def test_the_cursor_still_yields_each_completion_once_across_any_and_first_success_calls(client):
    early = await start(client, "mixed", FAIL_AFTER, "0.05")
    slow, _ = await loser(client, "mixed")

    first = await call(client, "await_group", group="mixed", mode="any", timeout_s=30)
    assert [r["effect_id"] for r in first["done"]] == [early["effect_id"]]
    winner = await start(client, "mixed", WIN_AFTER, "0.2")

    # The race is decided over the whole set (the earlier failure does not decide it); `done` holds only
    # what ended after the cursor: the winner, then the loser it superseded.
    second = await call(client, "await_group", group="mixed", mode="first_success", cursor=first["cursor"])
    assert second["satisfied"] is True
    assert [r["effect_id"] for r in second["winners"]] == [winner["effect_id"]]
    assert [r["effect_id"] for r in second["done"]] == [winner["effect_id"], slow]
    assert second["done"][1]["cancel_reason"] == "superseded"
    assert second["cursor"] > first["cursor"]

    # Passed back, the cursor yields nothing twice; a decided race stays decided.
    third = await call(client, "await_group", group="mixed", mode="first_success", cursor=second["cursor"])
    assert third["done"] == [] and third["satisfied"] is True and third["cursor"] == second["cursor"]
    assert [r["effect_id"] for r in third["winners"]] == [winner["effect_id"]]
    fourth = await call(client, "await_group", group="mixed", mode="any", cursor=second["cursor"], timeout_s=0.2)
    assert fourth["done"] == [] and fourth["complete"] is True


async def test_cancel_rest_false_reports_the_winner_and_leaves_the_others_running(client):
    other, pids = await loser(client, "keep")
    winner = await start(client, "keep", WIN_AFTER, "0.1")
    answer = await call(
        client, "await_group", effect_ids=[other, winner["effect_id"]], mode="first_success", cancel_rest=False
    )
    assert answer["satisfied"] is True and [r["effect_id"] for r in answer["winners"]] == [winner["effect_id"]]
    assert answer["pending"] == [other] and all(pid_alive(pid) for pid in pids)
    await call(client, "cancel_effect", effect_id=other, grace_s=0.1)


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"mode": "quorum"}, "mode quorum needs `k`"),
        ({"mode": "quorum", "k": 0}, "k must be between 1 and 2"),
        ({"mode": "quorum", "k": 3}, "k must be between 1 and 2"),
        ({"mode": "first_success", "k": 1}, "`k` is only for mode quorum"),
        ({"mode": "all", "k": 1}, "`k` is only for mode quorum"),
        ({"mode": "any", "cancel_rest": False}, "`cancel_rest` is only for modes first_success and quorum"),
        ({"mode": "race"}, "first_success"),
    ],
)
async def test_race_arguments_that_cannot_work_are_tool_errors_naming_what_is_allowed(
    client, settings, arguments, expected
):
    ids = [(await start(client, "args", "pass"))["effect_id"] for _ in range(2)]
    await call(client, "await_group", group="args", timeout_s=30)
    events = event_count(settings.db)
    text = await call_error(client, "await_group", effect_ids=ids, **arguments)
    assert expected in text, text
    assert event_count(settings.db) == events, "a refused call writes nothing"


async def test_a_first_success_race_over_real_stdio(tmp_path):
    async with Client(stdio_params(tmp_path / "j.db", "--allow-any-command"), read_timeout_seconds=70) as client:
        losers = [await loser(client, "stdio-race") for _ in range(2)]
        winner = await start(client, "stdio-race", WIN_AFTER, "0.2")
        answer = await call(client, "await_group", group="stdio-race", mode="first_success", timeout_s=30)
        for _, pids in losers:
            assert not any(pid_alive(pid) for pid in pids)
        assert answer["satisfied"] is True and answer["winners"][0]["effect_id"] == winner["effect_id"]
        assert sorted(r["cancel_reason"] or "" for r in answer["done"]) == ["", "superseded", "superseded"]
        assert (await call(client, "list_effects", group="stdio-race"))["summary"]["by_status"] == {
            "cancelled": 2,
            "succeeded": 1,
        }
