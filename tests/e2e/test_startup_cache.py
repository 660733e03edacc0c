"""The start-up cache over real stdio (effectd.protocol.startup): a second spawn answers the static
requests from the cache, its answers are the live ones of the same configuration, another configuration
is another key, a cache that cannot be used is ignored, and no answer is ever sent twice.

Whether an answer came from the cache is told without timing it: a cache file is marked (a tool added
that effectd does not have), and an answer carrying the mark came from the file. The raw stdout lines
are read, so a duplicate answer cannot hide behind a client that drops it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from effectd.app import build_server
from effectd.engine.core import Engine
from effectd.protocol.startup import Store, base_key
from tests.helpers.processes import effectd_bin

HELLO = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "cache-test", "version": "0"}}
MARK = {"name": "from_the_cache", "inputSchema": {"type": "object"}}
PROFILE = '[harness.reviewer]\ncommand = ["reviewer", "{prompt}"]\nparser = "lines"\n'


def _line(id_: int | None, method: str, params: dict[str, Any] | None = None) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if id_ is not None:
        message["id"] = id_
    if params is not None:
        message["params"] = params
    return json.dumps(message).encode() + b"\n"


HANDSHAKE = [
    _line(1, "initialize", HELLO),
    _line(None, "notifications/initialized"),
    _line(2, "tools/list", {}),
    _line(3, "tools/call", {"name": "list_effects", "arguments": {}}),
]


def serve(
    workdir: Path, cache: Path, *flags: str, lines: list[bytes] = HANDSHAKE, env: dict[str, str] | None = None
) -> tuple[list[dict[str, Any]], str]:
    """Spawns `effectd serve`, writes `lines` at once (as a client that does not wait), reads every raw
    stdout line until each request is answered, then closes stdin and reads on to the end. Returns the
    messages and what the server logged."""
    wanted = {json.loads(line)["id"] for line in lines if "id" in json.loads(line)}
    environment = {k: v for k, v in os.environ.items() if not k.startswith("EFFECTD_")}
    environment.update({"XDG_CACHE_HOME": str(cache), **(env or {})})
    messages: list[dict[str, Any]] = []
    with subprocess.Popen(
        [effectd_bin(), "serve", "--db", str(workdir / "journal.db"), *flags],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=workdir,
        env=environment,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        try:
            proc.stdin.write(b"".join(lines))
            proc.stdin.flush()
            for raw in proc.stdout:  # a hang is caught by pytest-timeout
                messages.append(json.loads(raw))
                if wanted <= {m.get("id") for m in messages}:
                    break
            proc.stdin.close()
            messages += [json.loads(raw) for raw in proc.stdout]  # to the end: a late duplicate is seen
            logged = proc.stderr.read().decode()
            assert proc.wait(timeout=60) == 0, logged
        finally:
            if proc.poll() is None:
                proc.kill()
    return messages, logged


def answers(messages: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The answers by id, each id answered exactly once."""
    ids = [m["id"] for m in messages if "id" in m and "method" not in m]
    assert sorted(ids) == sorted(set(ids)), f"an answer was sent twice: {ids}"
    return {m["id"]: m for m in messages if "id" in m and "method" not in m}


def cache_files(cache: Path) -> list[Path]:
    return sorted((cache / "effectd").glob("*.json"))


def mark_tools_list(cache: Path) -> None:
    """Adds a tool effectd does not have to every cached `tools/list` answer."""
    for path in cache_files(cache):
        entry = json.loads(path.read_text())
        if entry["method"] == "tools/list":
            entry["result"]["tools"].append(MARK)
            path.write_text(json.dumps(entry))


def tool_names(answer: dict[str, Any]) -> list[str]:
    return [tool["name"] for tool in answer["result"]["tools"]]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def test_the_second_spawn_answers_tools_list_from_the_cache_and_it_equals_the_live_answer(workdir, tmp_path):
    cache = tmp_path / "cache"
    cold, _ = serve(workdir, cache)
    live = answers(cold)
    assert "result" in live[3] and not live[3]["result"].get("isError")
    entries = {json.loads(p.read_text())["method"]: json.loads(p.read_text()) for p in cache_files(cache)}
    assert set(entries) == {"initialize", "tools/list"}  # written from the live answers
    assert entries["tools/list"]["result"] == live[2]["result"]
    assert entries["initialize"]["result"] == live[1]["result"]

    warm, _ = serve(workdir, cache)
    assert answers(warm)[2]["result"] == live[2]["result"]
    assert answers(warm)[1]["result"] == live[1]["result"]

    mark_tools_list(cache)
    marked, logged = serve(workdir, cache)
    assert tool_names(answers(marked)[2])[-1] == "from_the_cache"  # answered from the file, before the server
    assert "start-up cache answered tools/list" in logged  # the live answer differed: said so, and replaced
    entry = next(e for p in cache_files(cache) if (e := json.loads(p.read_text()))["method"] == "tools/list")
    assert entry["result"] == live[2]["result"]


@pytest.mark.anyio
async def test_the_cached_tools_list_is_the_in_memory_clients_tools_list(workdir, tmp_path, settings):
    cache = tmp_path / "cache"
    serve(workdir, cache)
    warm = answers(serve(workdir, cache)[0])[2]["result"]["tools"]
    async with Engine.open(settings) as engine, Client(build_server(engine)) as client:
        listed = (await client.list_tools()).tools
    assert [t["name"] for t in warm] == [t.name for t in listed]
    for wire, tool in zip(warm, listed, strict=True):
        assert wire["inputSchema"] == tool.input_schema
        assert wire.get("outputSchema") == tool.output_schema
        assert wire.get("description") == tool.description


def test_another_harness_profile_or_flag_is_another_key_answered_live(workdir, tmp_path):
    cache = tmp_path / "cache"
    serve(workdir, cache)
    mark_tools_list(cache)
    before = set(cache_files(cache))

    (workdir / "effectd.toml").write_text(PROFILE)  # read from the working directory, as serve reads it
    profiled = answers(serve(workdir, cache)[0])
    assert "from_the_cache" not in tool_names(profiled[2])
    assert len(set(cache_files(cache)) - before) == 2  # its own initialize and tools/list
    (workdir / "effectd.toml").unlink()

    flagged = answers(serve(workdir, cache, "--allow-command", "make")[0])
    assert "from_the_cache" not in tool_names(flagged[2])
    assert len(set(cache_files(cache)) - before) == 4


def test_the_journals_path_is_not_part_of_the_key(tmp_path):
    assert base_key(["--db", "a.db", "--max-concurrency", "3"]) == base_key(["--db=b.db", "--max-concurrency", "3"])
    assert base_key(["--max-concurrency", "3"]) != base_key(["--max-concurrency", "4"])


def test_a_corrupt_cache_file_is_ignored_and_replaced_with_the_live_answer(workdir, tmp_path):
    cache = tmp_path / "cache"
    live = answers(serve(workdir, cache)[0])
    for path in cache_files(cache):
        path.write_bytes(b'{"key": "trunc')
    again = answers(serve(workdir, cache)[0])
    assert again[2]["result"] == live[2]["result"] and again[1]["result"] == live[1]["result"]
    assert Store(cache / "effectd").read(cache_files(cache)[0].stem) is not None  # rewritten whole


def test_a_cache_that_cannot_be_written_is_ignored(workdir, tmp_path):
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    live = answers(serve(workdir, not_a_directory)[0])
    assert "result" in live[2] and "result" in live[3]
    if os.geteuid() != 0:  # root writes into a read-only directory anyway
        readonly = tmp_path / "readonly"
        (readonly / "effectd").mkdir(parents=True)
        (readonly / "effectd").chmod(0o500)
        assert "result" in answers(serve(workdir, readonly)[0])[2]
        assert cache_files(readonly) == []


def test_a_tools_call_written_right_after_initialize_is_answered_after_the_replayed_handshake(workdir, tmp_path):
    cache = tmp_path / "cache"
    serve(workdir, cache)
    lines = [
        _line(1, "initialize", HELLO),
        _line(None, "notifications/initialized"),
        _line(7, "tools/call", {"name": "list_effects", "arguments": {}}),
        _line(8, "tools/list", {}),
        _line(9, "ping"),
    ]
    messages, _ = serve(workdir, cache, lines=lines)
    got = answers(messages)
    assert set(got) == {1, 7, 8, 9}
    assert "result" in got[7] and not got[7]["result"].get("isError"), got[7]
    assert [m["id"] for m in messages if "id" in m][0] == 1  # the handshake's answer came first


def test_the_opt_out_serves_nothing_from_the_cache_and_writes_nothing(workdir, tmp_path):
    cache = tmp_path / "cache"
    serve(workdir, cache)
    mark_tools_list(cache)
    files = {p: p.read_bytes() for p in cache_files(cache)}
    opted_out = answers(serve(workdir, cache, env={"EFFECTD_NO_STARTUP_CACHE": "1"})[0])
    assert "from_the_cache" not in tool_names(opted_out[2])
    assert {p: p.read_bytes() for p in cache_files(cache)} == files


@pytest.mark.anyio
async def test_the_modern_era_discover_and_tools_list_come_from_the_cache_for_the_sdk_client(workdir, tmp_path):
    from mcp.client.stdio import StdioServerParameters

    env = {k: v for k, v in os.environ.items() if not k.startswith("EFFECTD_")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    params = StdioServerParameters(
        command=effectd_bin(), args=["serve", "--db", str(workdir / "j.db")], env=env, cwd=str(workdir)
    )
    listed = []
    for _ in range(2):
        async with Client(params, read_timeout_seconds=70) as client:
            listed.append([t.name for t in (await client.list_tools()).tools])
            assert (await client.call_tool("list_effects", {})).is_error is False
    assert listed[0] == listed[1] and "dispatch_effect" in listed[0]
    methods = {json.loads(p.read_text())["method"] for p in cache_files(tmp_path / "cache")}
    assert "tools/list" in methods and ({"server/discover", "initialize"} & methods)


def test_the_front_imports_neither_the_sdk_nor_pydantic():
    code = "import sys, effectd.cli.launch, effectd.protocol.startup; print(sorted(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'effectd.protocol.startup'" in loaded
    assert not [name for name in ("'mcp'", "'pydantic'", "'mcp_types'", "'anyio'") if name in loaded]
