"""The sandbox's arguments and their defaults, without a process: the profiles' defaults, the configuration,
and the bubblewrap argv the runner builds (mount order, hidden files, the network)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from effectd.config.settings import build_settings
from effectd.errors import ConfigError, InvalidRequestError
from effectd.harness.profiles import BUILTIN_PROFILES
from effectd.model.specs import build_spec
from effectd.runner.sandbox import RELAY, Sandbox, Sandboxes


def test_a_built_in_profile_sandboxes_to_its_model_api_its_base_url_and_its_config_folders() -> None:
    claude = BUILTIN_PROFILES["claude"].default_sandbox(
        {"ANTHROPIC_BASE_URL": "http://127.0.0.1:4567/v1", "HOME": "/h"}
    )
    assert claude == {
        "network": {"allow": ["api.anthropic.com:443", "127.0.0.1:4567"]},
        "write": ["/h/.claude", "/h/.claude.json"],
    }
    codex = BUILTIN_PROFILES["codex"].default_sandbox(
        {"HOME": "/h", "CODEX_HOME": "/c", "OPENAI_BASE_URL": "https://x.example"}
    )
    assert codex["network"] == {"allow": ["api.openai.com:443", "chatgpt.com:443", "x.example:443"]}
    assert codex["write"] == ["/h/.codex", "/c"]


def test_sandbox_true_is_the_profiles_sandbox_for_a_harness_and_network_none_for_a_command(tmp_path: Path) -> None:
    settings = build_settings(
        {"harness": {"mine": {"command": ["true", "{prompt}"], "sandbox": {"network": {"allow": ["h:1"]}}}}},
        db=tmp_path / "state" / "j.db",
        allow_any_command=True,
    )
    spec = build_spec(settings, {"harness": "mine", "prompt": "p", "sandbox": True, "cwd": str(tmp_path)})
    assert spec.sandbox is not None and spec.sandbox.network == {"allow": ["h:1"]}
    spec = build_spec(settings, {"command": ["true"], "sandbox": True, "cwd": str(tmp_path)})
    assert spec.sandbox is not None and spec.sandbox.network == "none"
    spec = build_spec(settings, {"command": ["true"], "cwd": str(tmp_path)})
    assert spec.sandbox is None  # the default default: no sandbox
    with pytest.raises(InvalidRequestError, match="no port from 1 to 65535"):
        build_spec(
            settings, {"command": ["true"], "sandbox": {"network": {"allow": ["h:70000"]}}, "cwd": str(tmp_path)}
        )


def test_wrong_sandbox_tables_in_the_configuration_stop_the_server_with_what_is_allowed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config \[sandbox\] default takes true, false or"):
        build_settings({"sandbox": {"default": "yes"}})
    with pytest.raises(ConfigError, match=r"config \[sandbox\] takes `default`"):
        build_settings({"sandbox": {"defualt": True}})
    with pytest.raises(ConfigError, match="harness profile 'claude': sandbox.network"):
        build_settings({"harness": {"claude": {"sandbox": {"network": "some"}}}})
    assert build_settings({"sandbox": {"default": {"network": "all"}}}).sandbox.default.network == "all"  # type: ignore[union-attr]


def test_mounts_go_from_the_shortest_path_to_the_longest_and_a_hidden_file_shows_an_empty_file(tmp_path: Path) -> None:
    outer, inner = tmp_path / "hidden", tmp_path / "hidden" / "own"
    inner.mkdir(parents=True)
    secret = tmp_path / "token"
    secret.write_text("s3cret")
    sandboxes = Sandboxes("true")  # no probe here: a program that exists, the argv is only built
    sandboxes._probed = True
    prepared = sandboxes.prepare(
        Sandbox(network="allow", allow=("h:1",), hide=(str(outer), str(secret), str(tmp_path / "absent"))),
        ["echo", "hi"],
        {"NO_PROXY": "*", "PATH": os.environ["PATH"]},
        str(inner),
        str(tmp_path / "out" / "e.result.json"),
        "eff_x",
    )
    try:
        argv = prepared.argv
        assert argv.index("--tmpfs") < argv.index(str(inner))  # the hidden folder first, its inside bound back
        hidden_file = argv.index(str(secret))
        assert argv[hidden_file - 2] == "--ro-bind" and (Path(argv[hidden_file - 1]).read_text() == "")
        assert str(tmp_path / "absent") not in argv
        assert "--unshare-net" in argv and RELAY in argv and argv[-2:] == ["echo", "hi"]
        assert "NO_PROXY" not in prepared.env and prepared.env["TMPDIR"] == "/tmp"
        assert prepared.result_file is not None and prepared.result_file.startswith(str(prepared.folder))
    finally:
        prepared.close()
    assert not prepared.folder.exists()  # the private folder goes with the effect
