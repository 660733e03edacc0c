"""Files an effect can reach (its result file, the output logs) do the damage for real: a FIFO, a
symbolic link, a 100 MB file, a deleted log, a full disk. None stalls, crashes or fools the server."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client

from effectd.config.settings import build_settings
from effectd.errors import ConfigError
from effectd.journal.store import replay_projection
from tests.helpers.http import serving, sse_events
from tests.helpers.mcp import call, connected, open_engine, read_until
from tests.helpers.processes import effectd_bin, py, stdio_params

pytestmark = pytest.mark.anyio
ANY = "--allow-any-command"

MKFIFO_RESULT = "import os; os.mkfifo(os.environ['EFFECTD_RESULT_FILE']); print('fifo made', flush=True)"
# The path of the effect's own output log, as an effect can work it out.
LOG_OF_SELF = (
    "os.path.join(os.path.dirname(os.environ['EFFECTD_RESULT_FILE']), os.environ['EFFECTD_EFFECT_ID'] + '.log')"
)
FIFO_ERROR = "the result file is a FIFO, not a regular file"


def write_result(text: str) -> list[str]:
    return py(f"import os; open(os.environ['EFFECTD_RESULT_FILE'], 'w').write({text!r})")


def vm_kib(pid: int, field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    assert match, f"{field} not in /proc/{pid}/status"
    return int(match.group(1))


async def ended(client: Client, effect_id: str, within_s: float = 30) -> dict[str, Any]:
    with anyio.fail_after(within_s):
        while not (done := await call(client, "await_group", effect_ids=[effect_id], timeout_s=10))["complete"]:
            pass
    record: dict[str, Any] = done["done"][0]
    return record


# --- result files ----------------------------------------------------------------------------------


async def test_a_fifo_left_as_the_result_file_does_not_stall_the_server_and_the_effect_ends_with_result_error(
    settings: Any,
) -> None:
    with anyio.fail_after(60):  # the engine's close included: an effect stuck on the FIFO would hold it
        async with connected(settings) as (_, client):
            fifos = [
                await call(client, "dispatch_effect", command=py(MKFIFO_RESULT), background=True) for _ in range(3)
            ]
            other = await call(client, "dispatch_effect", command=py("print('still answering')"), wait_s=20)
            assert other["status"] == "succeeded" and other["output_tail"] == "still answering\n"
            for fifo in fifos:
                record = await ended(client, fifo["effect_id"])
                assert record["status"] == "succeeded" and record["exit_code"] == 0
                assert record["result"] is None
                assert record["result_error"] == FIFO_ERROR
            listed = await call(client, "list_effects")
            assert {e["result_error"] for e in listed["effects"]} == {None, FIFO_ERROR}


async def test_a_fifo_result_file_over_real_stdio_ends_with_result_error_and_the_server_exits_cleanly(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(90):
        async with Client(stdio_params(tmp_path / "j.db", ANY), read_timeout_seconds=70) as client:
            fifo = await call(client, "dispatch_effect", command=py(MKFIFO_RESULT), background=True)
            assert (await call(client, "list_harnesses"))["harnesses"]
            record = await ended(client, fifo["effect_id"])
            polled = await call(client, "poll_effect", effect_id=fifo["effect_id"])
    assert record["status"] == "succeeded" and record["result"] is None
    assert polled["result_error"] == record["result_error"] == FIFO_ERROR


async def test_a_symlinked_result_file_is_not_followed(settings: Any, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text('{"secret": 1}')
    link = f"import os; os.symlink({str(target)!r}, os.environ['EFFECTD_RESULT_FILE'])"
    async with connected(settings) as (_, client):
        record = await call(client, "dispatch_effect", command=py(link), wait_s=20)
    assert record["status"] == "succeeded" and record["result"] is None
    assert record["result_error"] == "the result file is a symbolic link; links are not followed"


async def test_a_result_file_over_result_limit_bytes_is_refused_and_one_within_it_is_read(settings: Any) -> None:
    async with connected(settings, result_limit_bytes=64) as (_, client):
        small = await call(client, "dispatch_effect", command=write_result('{"ok": true}'), wait_s=20)
        big = await call(client, "dispatch_effect", command=write_result(json.dumps({"x": "y" * 100})), wait_s=20)
    assert small["result"] == {"ok": True} and small["result_error"] is None
    assert big["status"] == "succeeded" and big["result"] is None
    assert big["result_error"] == "the result file is 109 bytes, over result_limit_bytes (64)"


async def test_a_result_file_that_is_not_json_says_so_and_the_reason_is_journaled(settings: Any) -> None:
    async with connected(settings) as (_, client):
        record = await call(client, "dispatch_effect", command=write_result("{not json"), wait_s=20)
    assert record["status"] == "succeeded" and record["result"] is None
    assert record["result_error"].startswith("the result file is not JSON: ")
    async with open_engine(settings) as engine:  # a new server on the same journal
        again = await engine.poll(record["effect_id"])
        listed = await engine.list_effects()
    assert again.result_error == listed.effects[0].result_error == record["result_error"]
    replayed = (await replay_projection(settings.db))["effects"]  # the events alone say it
    assert [row["result_error"] for row in replayed] == [record["result_error"]]


async def test_a_result_nested_too_deep_to_be_returned_is_refused_and_list_effects_still_answers(settings: Any) -> None:
    async with connected(settings) as (_, client):
        deep = await call(client, "dispatch_effect", command=write_result("[" * 900 + "]" * 900), wait_s=20)
        fine = await call(client, "dispatch_effect", command=write_result("[" * 100 + "]" * 100), wait_s=20)
        listed = await call(client, "list_effects")
    assert deep["result"] is None
    assert deep["result_error"] == "the result file's JSON is nested more than 100 levels deep"
    assert fine["result_error"] is None and fine["result"] is not None
    assert len(listed["effects"]) == 2


async def test_a_directory_left_as_the_result_file_neither_breaks_a_retry_nor_hides_the_outcome(settings: Any) -> None:
    code = "import os, sys; os.makedirs(os.path.join(os.environ['EFFECTD_RESULT_FILE'], 'deep')); sys.exit(3)"
    async with connected(settings) as (_, client):
        record = await call(client, "dispatch_effect", command=py(code), max_attempts=2, wait_s=20)
    assert record["status"] == "failed" and record["attempt"] == 2
    assert record["error"] == "exited with code 3"  # the second attempt ran: its result path was cleared
    assert record["result_error"] == "the result file is a directory, not a regular file"


async def test_a_100_mb_result_file_is_refused_by_its_size_without_costing_memory(tmp_path: Path) -> None:
    # 50 million small numbers: read and parsed as before, about 1 GB of the server's memory.
    code = (
        "import os\n"
        "print(os.getppid(), flush=True)\n"
        "with open(os.environ['EFFECTD_RESULT_FILE'], 'w') as f:\n"
        "    f.write('[')\n"
        "    for _ in range(1000): f.write('0,' * 50_000)\n"
        "    f.write('0]')\n"
    )
    async with Client(stdio_params(tmp_path / "j.db", ANY), read_timeout_seconds=70) as client:
        record = await call(client, "dispatch_effect", command=py(code), background=True)
        server = int((await read_until(client, record["effect_id"], "\n")).split()[0])
        peak_before = vm_kib(server, "VmHWM")
        record = await ended(client, record["effect_id"], within_s=60)
        peak_after = vm_kib(server, "VmHWM")
    assert record["status"] == "succeeded" and record["result"] is None
    assert record["result_error"] == "the result file is 100000003 bytes, over result_limit_bytes (1048576)"
    growth_mib = (peak_after - peak_before) / 1024
    print(f"server peak RSS {peak_before / 1024:.1f} MiB -> {peak_after / 1024:.1f} MiB (+{growth_mib:.1f})")
    assert growth_mib < 20, f"the server's peak RSS grew by {growth_mib:.1f} MiB"


def test_result_limit_bytes_comes_from_the_file_the_environment_or_the_flag(monkeypatch: Any) -> None:
    monkeypatch.delenv("EFFECTD_RESULT_LIMIT_BYTES", raising=False)
    assert build_settings({}).result_limit_bytes == 1024 * 1024
    assert build_settings({"result_limit_bytes": 10}).result_limit_bytes == 10
    monkeypatch.setenv("EFFECTD_RESULT_LIMIT_BYTES", "20")
    assert build_settings({"result_limit_bytes": 10}).result_limit_bytes == 20
    assert build_settings({"result_limit_bytes": 10}, result_limit_bytes=30).result_limit_bytes == 30
    monkeypatch.setenv("EFFECTD_RESULT_LIMIT_BYTES", "lots")
    with pytest.raises(ConfigError, match=r"\$EFFECTD_RESULT_LIMIT_BYTES must be a number of bytes"):
        build_settings({})
    monkeypatch.delenv("EFFECTD_RESULT_LIMIT_BYTES")
    with pytest.raises(ConfigError, match="config `result_limit_bytes` must be"):
        build_settings({"result_limit_bytes": -1})


def test_the_serve_flag_sets_result_limit_bytes_and_refuses_a_bad_one(tmp_path: Path) -> None:
    bad = subprocess.run(
        [effectd_bin(), "serve", "--db", str(tmp_path / "j.db"), "--result-limit-bytes", "-5"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert bad.returncode == 2
    assert "--result-limit-bytes must be a number of bytes between 0 and" in bad.stderr


# --- output logs ------------------------------------------------------------------------------------


async def test_a_deleted_output_log_ends_the_stream_with_eof(settings: Any) -> None:
    async with connected(settings) as (engine, client):
        record = await call(client, "dispatch_effect", command=py("print('hello')"), wait_s=20)
        effect_id = record["effect_id"]
        (settings.output_dir / f"{effect_id}.log").unlink()
        with anyio.fail_after(10):
            chunk = await call(client, "stream_effect", effect_id=effect_id, cursor=0, wait_s=5)
            assert chunk["eof"] is True and chunk["cursor"] == record["output_bytes"] == 6, chunk
            again = await call(client, "stream_effect", effect_id=effect_id, cursor=chunk["cursor"], wait_s=5)
            assert again == {**chunk, "data": ""}
            resource = await client.read_resource(f"effectd://effects/{effect_id}/output", cache_mode="bypass")
            assert resource.contents[0].text == ""  # type: ignore[union-attr]
        async with serving(engine) as url, httpx2.AsyncClient(base_url=url) as http:
            path = f"/api/effects/{effect_id}/output/stream"
            with anyio.fail_after(10):
                async with http.stream("GET", path, timeout=httpx2.Timeout(10, read=30)) as response:
                    names = [name async for name, _ in sse_events(response)]
        assert names[-1] == "end" and len(names) <= 2, names


async def test_a_log_deleted_while_the_effect_runs_still_reads_what_was_written_then_ends(settings: Any) -> None:
    code = (
        f"import os, time\nlog = {LOG_OF_SELF}\nprint('before', flush=True)\n"
        "while not os.path.isfile(log): time.sleep(0.01)\n"
        "os.unlink(log)\nprint('after', flush=True)\n"
    )
    async with connected(settings) as (_, client):
        record = await call(client, "dispatch_effect", command=py(code + "time.sleep(60)"), background=True)
        text = await read_until(client, record["effect_id"], "after\n")
        assert text == "before\nafter\n"
        await call(client, "cancel_effect", effect_id=record["effect_id"], grace_s=0.1)
        with anyio.fail_after(10):
            chunk = await call(client, "stream_effect", effect_id=record["effect_id"], cursor=0, wait_s=5)
    assert chunk["eof"] is True and chunk["cursor"] == len(text)


async def test_a_fifo_in_the_logs_place_neither_blocks_the_server_nor_hides_the_output(settings: Any) -> None:
    # A FIFO before the first byte (the log is opened then), and another after the end (readers open it).
    code = (
        f"import os, time\nlog = {LOG_OF_SELF}\nos.mkfifo(log)\nprint('captured anyway', flush=True)\n"
        "while not os.path.isfile(log): time.sleep(0.01)\n"
        "os.unlink(log)\nos.mkfifo(log)\n"
    )
    with anyio.fail_after(60):
        async with connected(settings) as (_, client):
            record = await call(client, "dispatch_effect", command=py(code), wait_s=20)
            assert record["status"] == "succeeded", record
            assert record["output_tail"] == "captured anyway\n" and record["output_bytes"] == 16
            chunk = await call(client, "stream_effect", effect_id=record["effect_id"], cursor=0, wait_s=5)
            assert chunk["eof"] is True and chunk["cursor"] == 16
            assert (await call(client, "list_effects"))["effects"][0]["status"] == "succeeded"
    logs = [effectd_bin(), "logs", record["effect_id"], "--db", str(settings.db)]
    with anyio.fail_after(30):
        shown = await anyio.run_process(logs, check=False)
    assert shown.returncode == 0 and shown.stdout == b""


async def test_a_symlink_in_the_logs_place_is_not_followed(settings: Any, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched\n")
    code = f"import os\nos.symlink({str(victim)!r}, {LOG_OF_SELF})\nprint('captured', flush=True)\n"
    async with connected(settings) as (_, client):
        record = await call(client, "dispatch_effect", command=py(code), wait_s=20)
        chunk = await call(client, "stream_effect", effect_id=record["effect_id"], cursor=0)
    assert record["status"] == "succeeded" and chunk["data"] == "captured\n" and chunk["eof"]
    assert victim.read_text() == "untouched\n"
    assert not (settings.output_dir / f"{record['effect_id']}.log").is_symlink()


@contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[None]:
    where.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
        )
    except FileNotFoundError:
        pytest.skip("no `mount` program: a small tmpfs cannot be made")
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs was refused ({mounted.stderr.decode().strip()}); this needs root")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


async def test_a_short_write_on_a_full_disk_is_not_counted_and_the_stream_reaches_eof(settings: Any) -> None:
    with small_tmpfs(settings.output_dir, "48k"):
        async with connected(settings) as (_, client):
            write = "import sys; sys.stdout.buffer.write(b'x' * 100_000); sys.stdout.flush()"
            record = await call(client, "dispatch_effect", command=py(write), wait_s=20)
            on_disk = (settings.output_dir / f"{record['effect_id']}.log").stat().st_size
            text, cursor = "", 0
            with anyio.fail_after(20):
                while True:
                    chunk = await call(client, "stream_effect", effect_id=record["effect_id"], cursor=cursor, wait_s=5)
                    text, cursor = text + chunk["data"], chunk["cursor"]
                    if chunk["eof"]:
                        break
            second = await call(client, "dispatch_effect", command=py("print('next')"), wait_s=20)
    assert record["status"] == "succeeded" and record["exit_code"] == 0  # the effect's own outcome stands
    assert 0 < on_disk < 100_000
    assert record["output_bytes"] == on_disk == len(text) and record["output_truncated"] is True
    assert text == "x" * on_disk
    assert second["status"] == "succeeded"  # the server goes on
