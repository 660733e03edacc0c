"""Several agent sessions in one project: real `effectd serve` processes over stdio on one journal.

Each test starts two or three servers on the same `.db`, as two Claude Code sessions in one project
do, drives them through the official MCP client, and ends by checking the journal: exactly one
terminal event per effect, whatever crossed between the servers.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path

import anyio
import pytest
from mcp import Client

from effectd.journal.projection import TERMINAL_EVENTS
from tests.helpers.mcp import call, read_until
from tests.helpers.processes import SLEEP, effectd_bin, pid_alive, py, stdio_params, wait_gone

pytestmark = [pytest.mark.anyio]
ANY = "--allow-any-command"
# Prints its server's pid and its own (and a grandchild's), then a numbered line every 50 ms until killed.
TICKING = """
import os, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(f'pids {os.getppid()} {os.getpid()} {grandchild.pid}', flush=True)
i = 0
while True:
    print(f'tick {i}', flush=True)
    i += 1
    time.sleep(0.05)
"""


def rows(db: Path, sql: str, *params: object) -> list[dict]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(row) for row in conn.execute(sql, params)]


def assert_one_terminal_event_each(db: Path) -> None:
    effects = {r["effect_id"] for r in rows(db, "select effect_id from effects")}
    marks = ", ".join("?" * len(TERMINAL_EVENTS))
    ends = Counter(
        r["effect_id"] for r in rows(db, f"select effect_id from events where type in ({marks})", *TERMINAL_EVENTS)
    )
    assert effects and set(ends) == effects, f"effects without an end: {effects - set(ends)}"
    assert all(n == 1 for n in ends.values()), (
        f"effects with more than one end: {[e for e, n in ends.items() if n > 1]}"
    )
    seqs = [r["seq"] for r in rows(db, "select seq from events order by seq")]
    assert seqs == list(range(1, len(seqs) + 1)), "seq has gaps"


@asynccontextmanager
async def servers(db: Path, count: int, *flags: str) -> AsyncIterator[list[Client]]:
    """`count` stdio servers on the journal `db`, each with its own client."""
    async with AsyncExitStack() as stack:
        clients = []
        for _ in range(count):
            client = await stack.enter_async_context(Client(stdio_params(db, ANY, *flags), read_timeout_seconds=70))
            await call(client, "list_harnesses")  # started and answering
            clients.append(client)
        yield clients


async def pids_of(client: Client, effect_id: str) -> tuple[int, int, int]:
    """The server's, the effect's and its grandchild's pids, as a TICKING effect printed them."""
    text = await read_until(client, effect_id, "tick 1")
    server, child, grandchild = (int(p) for p in text.split("pids ", 1)[1].split("\n", 1)[0].split())
    return server, child, grandchild


async def start_ticking(client: Client) -> tuple[dict, int, int]:
    """Starts TICKING in the background on ``client``; returns its record, its child's and its grandchild's pids."""
    record = await call(client, "dispatch_effect", command=py(TICKING), background=True)
    _, child, grandchild = await pids_of(client, record["effect_id"])
    return record, child, grandchild


async def test_two_servers_see_each_others_effects_and_output_live(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    async with servers(db, 2) as (a, b):
        mine = await call(a, "dispatch_effect", command=py(TICKING), background=True, group="shared", label="on a")
        theirs = await call(b, "dispatch_effect", command=py(SLEEP, "0.3"), background=True, group="shared")
        assert mine["owner"] and theirs["owner"] and mine["owner"] != theirs["owner"]
        # B reads A's running effect: its record, its output as it is written, the journal's listing.
        text = await read_until(b, mine["effect_id"], "tick 3")
        assert "tick 0" in text
        polled = await call(b, "poll_effect", effect_id=mine["effect_id"])
        assert (polled["status"], polled["owner"], polled["label"]) == ("running", mine["owner"], "on a")
        listed = await call(a, "list_effects", group="shared")
        assert {r["effect_id"]: r["owner"] for r in listed["effects"]} == {
            mine["effect_id"]: mine["owner"],
            theirs["effect_id"]: theirs["owner"],
        }
        # A waits for B's effect to end; B streams more of A's output with a wait, as it arrives.
        waited = await call(a, "await_group", effect_ids=[theirs["effect_id"]], timeout_s=20)
        assert waited["done"][0]["status"] == "succeeded" and waited["complete"]
        size = polled["output_bytes"]
        chunk = await call(b, "stream_effect", effect_id=mine["effect_id"], cursor=size, wait_s=5)
        assert chunk["data"].startswith("tick") and chunk["eof"] is False
        # The output resource of another server's effect is the same log.
        resource = await b.read_resource(f"effectd://effects/{mine['effect_id']}/output")
        assert "tick 3" in resource.contents[0].text  # type: ignore[union-attr]
        # The end is seen by B within half a second of A journaling it.
        ended = await call(a, "cancel_effect", effect_id=mine["effect_id"], grace_s=0.2)
        began = time.monotonic()
        with anyio.fail_after(5):
            while (await call(b, "poll_effect", effect_id=mine["effect_id"]))["status"] != "cancelled":  # noqa: ASYNC110
                await anyio.sleep(0.02)
        seen_after = time.monotonic() - began
        assert ended["status"] == "cancelled"
        rest = await call(b, "stream_effect", effect_id=mine["effect_id"], cursor=size, max_bytes=1 << 20)
        assert rest["eof"] is True
    assert seen_after < 0.5, f"B saw A's cancel {seen_after:.2f} s after A returned it"
    assert_one_terminal_event_each(db)


async def test_await_group_across_three_servers_takes_each_completion_exactly_once(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    async with servers(db, 3) as clients:
        ids = []
        for n, delay in enumerate(["0.1", "0.6", "0.3", "0.9", "0.2", "0.5", "0.4", "0.7", "0.05"]):
            client = clients[n % 3]
            record = await call(client, "dispatch_effect", command=py(SLEEP, delay), background=True, group="fan")
            ids.append(record["effect_id"])

        async def take_all(client: Client) -> list[str]:
            taken, cursor = [], 0
            with anyio.fail_after(40):
                while True:
                    wait = await call(client, "await_group", group="fan", mode="any", cursor=cursor, timeout_s=10)
                    taken += [r["effect_id"] for r in wait["done"]]
                    cursor = wait["cursor"]
                    if wait["complete"] and not wait["done"]:
                        return taken

        results: dict[int, list[str]] = {}

        async def collect(index: int) -> None:
            results[index] = await take_all(clients[index])

        async with anyio.create_task_group() as tg:
            for index in range(3):
                tg.start_soon(collect, index)
    for index, taken in results.items():
        assert sorted(taken) == sorted(ids), f"server {index} took {Counter(taken)}"
        assert len(taken) == len(set(taken)), f"server {index} took a completion twice"
    ended = rows(db, "select effect_id from effects order by terminal_seq")
    assert results[0] == [r["effect_id"] for r in ended], "completions out of their journal order"
    assert_one_terminal_event_each(db)


async def test_cancel_crosses_servers_and_kills_the_process_group(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    async with servers(db, 3) as (a, b, c):
        one = await call(a, "dispatch_effect", command=py(TICKING), background=True, group="stop")
        two = await call(b, "dispatch_effect", command=py(TICKING), background=True, group="stop")
        three = await call(c, "dispatch_effect", command=py(TICKING), background=True, group="stop")
        _, child, grandchild = await pids_of(a, one["effect_id"])
        # B cancels A's effect: the answer is the terminal record, and the whole group is gone.
        record = await call(b, "cancel_effect", effect_id=one["effect_id"], reason="from b", grace_s=0.2)
        assert (record["status"], record["cancel_reason"], record["cancel_message"]) == ("cancelled", "user", "from b")
        await wait_gone([child, grandchild], within_s=5)
        # C cancels the group: its own effect, and B's through B.
        pids = [*(await pids_of(b, two["effect_id"]))[1:], *(await pids_of(c, three["effect_id"]))[1:]]
        group = await call(c, "cancel_group", group="stop")
        assert sorted(group["cancelled"]) == sorted([two["effect_id"], three["effect_id"]])
        assert {r["status"] for r in group["effects"]} == {"cancelled"}
        await wait_gone(pids, within_s=10)
        owner = await call(a, "poll_effect", effect_id=two["effect_id"])
        assert owner["status"] == "cancelled"
        # `effectd cancel` reaches the one server of the three that runs the effect.
        four, child, grandchild = await start_ticking(b)
        with anyio.fail_after(30):
            done = await anyio.run_process([effectd_bin(), "cancel", four["effect_id"], "--db", str(db)], check=False)
        assert done.returncode == 0, done.stderr
        assert '"cancelled"' in done.stdout.decode()
        await wait_gone([child, grandchild], within_s=10)
    assert_one_terminal_event_each(db)


async def test_restarting_one_server_never_touches_the_others_running_effects(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    async with servers(db, 1) as (a,):
        running, child, grandchild = await start_ticking(a)
        for _ in range(2):  # B starts, works and stops; then starts again
            async with servers(db, 1) as (b,):
                done = await call(b, "dispatch_effect", command=py("print('b was here')"))
                assert done["status"] == "succeeded"
                seen = await call(b, "poll_effect", effect_id=running["effect_id"])
                assert seen["status"] == "running"
        assert pid_alive(child) and pid_alive(grandchild), "a restart killed another server's effect"
        still = await call(a, "poll_effect", effect_id=running["effect_id"])
        assert (still["status"], still["error"]) == ("running", None)
        more = await read_until(a, running["effect_id"], f"tick {int(still['output_tail'].split()[-1]) + 2}")
        assert more
        await call(a, "cancel_effect", effect_id=running["effect_id"], grace_s=0.2)
    assert_one_terminal_event_each(db)


async def test_a_sigkilled_servers_effects_are_recovered_by_the_next_server_while_the_others_run(
    tmp_path: Path,
) -> None:
    db = tmp_path / "journal.db"
    async with servers(db, 1) as (b,):
        kept, kept_child, kept_grandchild = await start_ticking(b)
        with suppress(Exception, BaseExceptionGroup):
            async with servers(db, 1, "--max-concurrency", "1") as (a,):
                doomed = await call(a, "dispatch_effect", command=py(TICKING), background=True, group="a")
                waiting = await call(a, "dispatch_effect", command=py("print('ran after all')"), background=True)
                server, child, grandchild = await pids_of(a, doomed["effect_id"])
                os.kill(server, signal.SIGKILL)
                await wait_gone([server, child])  # its child died with it (the parent-death signal)
        # The next server to start recovers A's, unless B, watching its peers, took A over first
        # (test_sessions_faults.py): either way as recovery at start would, B's own effect untouched.
        async with servers(db, 1) as (c,):
            await wait_gone([grandchild])
            ended = await call(c, "poll_effect", effect_id=doomed["effect_id"])
            assert (ended["status"], ended["error"]) == ("failed", "interrupted")
            later = await call(c, "await_group", effect_ids=[waiting["effect_id"]], timeout_s=20)
            assert later["done"][0]["status"] == "succeeded" and later["done"][0]["output_tail"] == "ran after all\n"
            seen_by_b = await call(b, "await_group", effect_ids=[doomed["effect_id"], waiting["effect_id"]])
            assert seen_by_b["complete"]
        assert pid_alive(kept_child) and pid_alive(kept_grandchild)
        assert (await call(b, "poll_effect", effect_id=kept["effect_id"]))["status"] == "running"
        await call(b, "cancel_effect", effect_id=kept["effect_id"], grace_s=0.2)
    assert_one_terminal_event_each(db)


async def test_a_symlinked_path_and_a_deleted_lock_file_are_still_the_same_journal(tmp_path: Path) -> None:
    real = tmp_path / "project" / ".effectd" / "journal.db"
    real.parent.mkdir(parents=True)
    link = tmp_path / "elsewhere.db"
    link.symlink_to(real)
    async with servers(real, 1) as (a,):
        running, child, grandchild = await start_ticking(a)
        (real.parent / "journal.db.lock").unlink()  # someone tidies up
        async with servers(link, 1) as (b,):
            seen = await call(b, "poll_effect", effect_id=running["effect_id"])
            assert seen["status"] == "running" and seen["owner"] == running["owner"]
            other = await call(b, "dispatch_effect", command=py("print('via the link')"))
            assert other["status"] == "succeeded"
            assert (await call(a, "poll_effect", effect_id=other["effect_id"]))["output_tail"] == "via the link\n"
        async with servers(link, 1) as (b,):  # and restarted through the link
            assert (await call(b, "poll_effect", effect_id=running["effect_id"]))["status"] == "running"
        assert pid_alive(child) and pid_alive(grandchild)
        assert not (tmp_path / "elsewhere.db.lock").exists(), "the symlink got a lock of its own"
        await call(a, "cancel_effect", effect_id=running["effect_id"], grace_s=0.2)
    assert_one_terminal_event_each(real)


async def test_a_key_dispatched_at_once_through_two_servers_starts_one_process(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    starts = tmp_path / "starts"
    count = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"
    async with servers(db, 2) as (a, b):
        answers: dict[str, list[str]] = {}

        async def dispatch(client: Client, key: str) -> None:
            record = await call(
                client, "dispatch_effect", command=py(count, str(starts), key), key=key, run_id="shared"
            )
            answers.setdefault(key, []).append(record["effect_id"])

        for n in range(6):
            async with anyio.create_task_group() as tg:
                tg.start_soon(dispatch, a, f"k{n}")
                tg.start_soon(dispatch, b, f"k{n}")
            assert len(set(answers[f"k{n}"])) == 1, f"two effects for one key: {answers[f'k{n}']}"
        await call(a, "await_group", effect_ids=[ids[0] for ids in answers.values()], timeout_s=10)
    lines = starts.read_text().split()
    assert sorted(lines) == [f"k{n}" for n in range(6)], f"processes started per key: {Counter(lines)}"
    assert len(rows(db, "select 1 from effects")) == 6
    assert_one_terminal_event_each(db)


async def test_cancelling_a_killed_servers_effect_takes_that_server_over(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    async with servers(db, 1) as (b,):
        kept, kept_child, _ = await start_ticking(b)
        with suppress(Exception, BaseExceptionGroup):
            async with servers(db, 1, "--max-concurrency", "1") as (a,):
                doomed = await call(a, "dispatch_effect", command=py(TICKING), background=True, group="a")
                queued = await call(a, "dispatch_effect", command=py(SLEEP, "60"), background=True, group="a")
                server, child, grandchild = await pids_of(a, doomed["effect_id"])
                os.kill(server, signal.SIGKILL)
                await wait_gone([server, child])
        # The owner is gone: recovery rules apply, here and now. B takes A over (A's running effect
        # ends interrupted, its leftovers killed), and the waiting one, now B's, is cancelled by B.
        record = await call(b, "cancel_effect", effect_id=queued["effect_id"], reason="no longer needed")
        assert (record["status"], record["cancel_message"]) == ("cancelled", "no longer needed")
        await wait_gone([grandchild])
        ended = await call(b, "poll_effect", effect_id=doomed["effect_id"])
        assert (ended["status"], ended["error"]) == ("failed", "interrupted")
        assert pid_alive(kept_child), "the taking over touched the live server's own effect"
        async with servers(db, 1) as (c,):  # a later start finds nothing left to recover
            group = await call(c, "await_group", group="a", timeout_s=5)
            assert group["complete"]
        await call(b, "cancel_effect", effect_id=kept["effect_id"], grace_s=0.2)
    assert_one_terminal_event_each(db)
