"""Bad input gets a clear tool error that says what was wrong and what is allowed, and writes nothing."""

from __future__ import annotations

import sys

import pytest

from tests.helpers.mcp import call, call_error, connected
from tests.helpers.processes import event_count, py

pytestmark = pytest.mark.anyio

OK = py("print(1)")


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        ({"command": OK, "harness": "claude", "prompt": "x"}, "exactly one"),
        ({}, "exactly one"),
        ({"command": []}, "empty"),
        ({"command": "echo hi"}, "list"),
        ({"command": [sys.executable, 3]}, "string"),
        ({"command": OK, "timeout_s": -1}, "timeout_s"),
        ({"command": OK, "timeout_s": 8 * 24 * 3600}, "timeout_s"),
        ({"command": OK, "idle_timeout_s": -0.5}, "idle_timeout_s"),
        ({"command": OK, "grace_s": 601}, "grace_s"),
        ({"command": OK, "grace_s": -1}, "grace_s"),
        ({"command": OK, "wait_s": 56}, "wait_s"),
        ({"command": OK, "timout_s": 5}, "unknown argument timout_s"),
        ({"command": OK, "cwd": "/no/such/dir"}, "not a directory"),
        ({"command": OK, "cwd": __file__}, "not a directory"),
        ({"command": OK, "env": {"A=B": "x"}}, "env name"),
        ({"command": OK, "env": {"": "x"}}, "env name"),
        ({"command": OK, "env": {"A": "x\0y"}}, "NUL"),
        ({"command": [sys.executable, "-c", "print(1)\0"]}, "NUL"),
        ({"command": [sys.executable, "-c", *["x" * (100 * 1024)] * 3]}, "256 KiB"),
        ({"command": [sys.executable, "-c", "x" * (130 * 1024)]}, "128 KiB"),
        ({"command": OK, "prompt": "x"}, "harness"),
        ({"harness": "nosuch", "prompt": "x"}, "unknown harness"),
        ({"harness": "claude"}, "prompt"),
        ({"harness": "claude", "prompt": "a\0b"}, "NUL"),
        ({"command": OK, "depends_on": ["eff_doesnotexist"]}, "eff_doesnotexist"),
        ({"command": OK, "max_attempts": 0}, "max_attempts"),
        ({"command": OK, "background": "yes"}, "background"),
    ],
)
async def test_a_bad_dispatch_is_refused_with_a_clear_message_and_writes_nothing(settings, arguments, says):
    async with connected(settings) as (_, client):
        message = await call_error(client, "dispatch_effect", run_id="r-bad", **arguments)
        listed = await call(client, "list_effects", run_id="r-bad")
    assert says.lower() in message.lower(), message
    assert listed["effects"] == []
    assert event_count(settings.db) == 0


async def test_a_harness_whose_program_is_missing_names_the_program(settings):
    async with connected(settings) as (_, client):
        message = await call_error(client, "dispatch_effect", harness="claude", prompt="hello")
    assert "'claude'" in message and "PATH" in message
    assert event_count(settings.db) == 0


async def test_a_command_not_on_the_allow_list_names_the_flag_and_setting_that_allow_it(settings):
    async with connected(settings, allow_any_command=False, allow_commands=("git",)) as (_, client):
        message = await call_error(client, "dispatch_effect", command=OK)
        allowed = await call_error(client, "dispatch_effect", command=["git-nope"])
    assert "--allow-command" in message and "--allow-any-command" in message and "[commands] allow" in message
    assert "git-nope" in allowed
    assert event_count(settings.db) == 0


async def test_a_command_allowed_by_its_path_runs(settings):
    async with connected(settings, allow_any_command=False, allow_commands=(sys.executable,)) as (_, client):
        record = await call(client, "dispatch_effect", command=OK)
    assert record["status"] == "succeeded"


@pytest.mark.parametrize(
    ("tool", "arguments", "says"),
    [
        ("poll_effect", {"effect_id": "eff_nosuch"}, "eff_nosuch"),
        ("poll_effect", {}, "effect_id"),
        ("cancel_effect", {"effect_id": "eff_nosuch"}, "eff_nosuch"),
        ("cancel_effect", {"effect_id": "x", "grace_s": 1000}, "grace_s"),
        ("stream_effect", {"effect_id": "eff_nosuch"}, "eff_nosuch"),
        ("stream_effect", {"effect_id": "x", "cursor": -1}, "cursor"),
        ("stream_effect", {"effect_id": "x", "wait_s": 100}, "wait_s"),
        ("stream_effect", {"effect_id": "x", "max_bytes": 0}, "max_bytes"),
        ("await_group", {"group": "g", "timeout_s": 56}, "timeout_s"),
        ("await_group", {"group": "g", "mode": "some"}, "mode"),
        ("await_group", {"group": "never-used"}, "never-used"),
        ("list_effects", {"status": ["done"]}, "status"),
        ("list_effects", {"limit": 0}, "limit"),
        ("list_effects", {"colour": "red"}, "unknown argument colour"),
        ("cancel_group", {"group": "nosuch"}, "nosuch"),
        ("list_harnesses", {"verbose": True}, "unknown argument verbose"),
    ],
)
async def test_other_tools_refuse_bad_arguments_clearly(settings, tool, arguments, says):
    async with connected(settings) as (_, client):
        message = await call_error(client, tool, **arguments)
    assert says.lower() in message.lower(), message
    assert event_count(settings.db) == 0


async def test_an_effect_cannot_reach_another_program_of_an_allowed_name_through_its_own_path(settings, tmp_path):
    impostor = tmp_path / "bin" / "echo"
    impostor.parent.mkdir()
    impostor.write_text("#!/bin/sh\necho impostor\n")
    impostor.chmod(0o755)
    async with connected(settings, allow_any_command=False, allow_commands=("echo",)) as (_, client):
        message = await call_error(
            client, "dispatch_effect", command=["echo", "hi"], env={"PATH": str(impostor.parent)}
        )
        record = await call(client, "dispatch_effect", command=["echo", "hi"])
    assert "not allowed" in message
    assert record["output_tail"] == "hi\n" and record["command"][0].endswith("/echo")
