"""Choosing the runner (--runner, config, EFFECTD_RUNNER, RAY_ADDRESS), what the local runner accepts
as `resources`, and the record's `node`. None of this needs Ray installed."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
from dataclasses import replace

import pytest

from effectd.cli.main import main
from effectd.config.settings import RAY_MISSING, build_settings
from effectd.errors import ConfigError
from effectd.harness.profiles import profile_from_config
from tests.helpers.mcp import call, call_error, connected

pytestmark = pytest.mark.anyio


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))


def test_serve_with_the_ray_runner_but_no_ray_says_what_to_install(no_ray, tmp_path, capsys):
    status = main(["serve", "--runner", "ray", "--db", str(tmp_path / "j.db")])
    err = capsys.readouterr().err
    assert status == 2
    assert "pip install 'effectd[ray]'" in err and "Traceback" not in err
    assert not (tmp_path / "j.db").exists()


def test_the_runner_comes_from_the_flag_then_the_config_then_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("EFFECTD_RUNNER", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    db = tmp_path / "j.db"
    assert build_settings({}, db=db).runner == "local"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())  # as if Ray were installed
    monkeypatch.setenv("EFFECTD_RUNNER", "ray")
    from_env = build_settings({}, db=db)
    assert from_env.runner == "ray" and from_env.ray_address is None  # no address: a local Ray is started
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert build_settings({}, db=db).ray_address == "10.0.0.1:6379"
    config = {"runner": "ray", "ray_address": "ray://head:10001"}
    assert build_settings(config, db=db).ray_address == "ray://head:10001"
    flagged = build_settings(config, db=db, runner="local", ray_address="h:1")
    assert flagged.runner == "local"
    assert build_settings({"runner": "local"}, db=db).runner == "local"  # the file wins over the environment


def test_a_wrong_runner_or_address_is_refused_naming_what_is_allowed(tmp_path):
    with pytest.raises(ConfigError, match="runner must be one of local, ray, not 'k8s'"):
        build_settings({"runner": "k8s"}, db=tmp_path / "j.db")
    with pytest.raises(ConfigError, match="ray_address"):
        build_settings({"ray_address": 6379}, db=tmp_path / "j.db")


def test_the_ray_missing_message_names_the_extra() -> None:
    assert "pip install 'effectd[ray]'" in RAY_MISSING


def test_the_default_path_never_imports_ray(tmp_path):
    code = (
        "import sys, effectd.app, effectd.engine.core, effectd.cli.main, effectd.runner.choose;"
        "from effectd.config.settings import build_settings; build_settings({}, db=sys.argv[1]);"
        "print('ray' in sys.modules)"
    )
    local = subprocess.run([sys.executable, "-c", code, str(tmp_path / "j.db")], capture_output=True, text=True)
    assert local.stdout.strip() == "False", local.stderr


async def test_the_local_runner_refuses_resources_other_than_cpu_and_writes_nothing(settings):
    async with connected(settings) as (engine, client):
        error = await call_error(client, "dispatch_effect", command=["true"], resources={"GPU": 1, "CPU": 1})
        listed = await call(client, "list_effects")
        bad = await call_error(client, "dispatch_effect", command=["true"], resources={"CPU": 0})
        in_flow = await call_error(
            client, "dispatch_flow", steps=[{"id": "a", "command": ["true"], "resources": {"special": 1}}]
        )
        fine = await call(client, "dispatch_effect", command=["true"], resources={"CPU": 1})
    assert "'GPU'" in error and "--runner ray" in error and "only `CPU`" in error
    assert listed["effects"] == []
    assert "positive amounts" in bad
    assert "'special'" in in_flow
    assert fine["status"] == "succeeded"


async def test_a_harness_profile_can_ask_for_resources(settings):
    profile = profile_from_config(
        "gpu-agent", {"command": [sys.executable, "-c", "pass", "{prompt}"], "resources": {"GPU": 1}}
    )
    assert profile.resources == {"GPU": 1.0}
    with pytest.raises(ValueError, match="resources"):
        profile_from_config("bad", {"command": ["x", "{prompt}"], "resources": {"GPU": -1}})
    local = replace(settings, harnesses={**settings.harnesses, "gpu-agent": profile})
    async with connected(local) as (_, client):
        error = await call_error(client, "dispatch_effect", harness="gpu-agent", prompt="hi")
    assert "'GPU'" in error and "only `CPU`" in error


async def test_the_record_says_the_local_host_ran_it_and_the_journal_keeps_it(settings):
    async with connected(settings) as (_, client):
        record = await call(client, "dispatch_effect", command=["true"])
    async with connected(settings) as (_, client):
        again = await call(client, "poll_effect", effect_id=record["effect_id"])
    assert record["node"] == socket.gethostname()
    assert again["node"] == socket.gethostname()
