"""Harness profiles build argv without interpreting the prompt, and config tables are checked key by key."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from effectd.harness.parsers import PARSERS
from effectd.harness.profiles import BUILTIN_PROFILES, HarnessProfile, profile_from_config

TRICKY_PROMPT = "fix \"it\" {args} {prompt} $(rm -rf ~) 'now' `id` {x}\n-- --help ; | &"
ARGS = ["--model", "m 1", "{prompt}"]

EXPECTED_ARGV = {
    "claude": ["claude", "-p", TRICKY_PROMPT, "--output-format", "stream-json", "--verbose", *ARGS],
    "codex": ["codex", "exec", "--json", "--skip-git-repo-check", *ARGS, "--", TRICKY_PROMPT],
    "gemini": ["gemini", "-p", TRICKY_PROMPT, "-o", "stream-json", *ARGS],
    "pi": ["pi", "--mode", "json", "-p", *ARGS, TRICKY_PROMPT],
    "opencode": ["opencode", "run", "--format", "json", *ARGS, TRICKY_PROMPT],
}


def test_the_builtin_profiles_are_the_five_clis_each_with_its_own_parser() -> None:
    assert sorted(BUILTIN_PROFILES) == sorted(EXPECTED_ARGV)
    for name, profile in BUILTIN_PROFILES.items():
        assert profile.name == name
        assert profile.parser == name
        assert profile.prompt_via == "arg"
        assert "line" in profile.description


@pytest.mark.parametrize("name", sorted(EXPECTED_ARGV))
def test_builtin_argv_keeps_the_prompt_as_one_uninterpreted_element(name: str) -> None:
    argv = BUILTIN_PROFILES[name].build_argv(TRICKY_PROMPT, ARGS)
    assert argv == EXPECTED_ARGV[name]
    assert argv.count(TRICKY_PROMPT) == 1


@pytest.mark.parametrize("name", sorted(EXPECTED_ARGV))
def test_builtin_argv_without_extra_args_has_nothing_in_their_place(name: str) -> None:
    argv = BUILTIN_PROFILES[name].build_argv("hello", [])
    assert "{args}" not in argv
    assert argv == [("hello" if part == TRICKY_PROMPT else part) for part in EXPECTED_ARGV[name] if part not in ARGS]


def test_prompt_is_substituted_inside_a_larger_element() -> None:
    profile = HarnessProfile(name="t", command=("tool", "--prompt={prompt}", "--again={prompt}"), parser="lines")
    assert profile.build_argv("a b", []) == ["tool", "--prompt=a b", "--again=a b"]


def test_args_are_appended_at_the_end_when_the_template_has_no_args_element() -> None:
    profile = HarnessProfile(name="t", command=("tool", "{prompt}"), parser="lines")
    assert profile.build_argv("p", ["-v", "{args}"]) == ["tool", "p", "-v", "{args}"]


def test_stdin_profile_leaves_the_argv_alone() -> None:
    profile = HarnessProfile(name="t", command=("tool", "-", "{args}"), parser="lines", prompt_via="stdin")
    assert profile.build_argv("the prompt", ["-x"]) == ["tool", "-", "-x"]


def test_executable_found_on_path_is_available_with_its_absolute_path() -> None:
    program = Path(sys.executable)
    profile = HarnessProfile(
        name="py", command=(program.name, "{prompt}"), parser="lines", env={"PATH": str(program.parent)}
    )
    assert profile.executable == Path(sys.executable).name
    resolved = profile.resolve_executable()
    assert resolved is not None
    assert os.path.isabs(resolved)
    assert os.path.samefile(resolved, sys.executable)


def test_missing_executable_is_not_available() -> None:
    profile = HarnessProfile(name="x", command=("effectd-no-such-program-xyz", "{prompt}"), parser="lines")
    assert profile.resolve_executable() is None
    shown = profile.to_json()
    assert (shown["available"], shown["path"]) == (False, None)


def test_absolute_path_needs_the_exec_bit(tmp_path: Path) -> None:
    script = tmp_path / "agent"
    script.write_text("#!/bin/sh\n")
    profile = HarnessProfile(name="a", command=(str(script), "{prompt}"), parser="lines")
    assert profile.resolve_executable() is None
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    assert profile.resolve_executable() == str(script)


def test_to_json_shows_env_names_but_not_their_values() -> None:
    profile = HarnessProfile(
        name="secret",
        command=(sys.executable, "-c", "pass", "{prompt}"),
        parser="claude",
        env={"API_KEY": "s3cr3t", "A_FLAG": "1"},
        timeout_s=60.0,
        cwd="/tmp",
        max_concurrency=2,
        description="demo",
    )
    assert profile.to_json() == {
        "name": "secret",
        "command": [sys.executable, "-c", "pass", "{prompt}"],
        "parser": "claude",
        "prompt_via": "arg",
        "env": ["API_KEY", "A_FLAG"],
        "timeout_s": 60.0,
        "cwd": "/tmp",
        "max_concurrency": 2,
        "description": "demo",
        "executable": sys.executable,
        "available": True,
        "path": sys.executable,
        "approvals": False,  # no permission hook declared: `approvals: "ask"` is refused
    }
    assert "s3cr3t" not in repr(profile.to_json())


def test_profile_env_is_read_only_and_a_copy() -> None:
    env = {"A": "1"}
    profile = HarnessProfile(name="t", command=("tool", "{prompt}"), parser="lines", env=env)
    env["A"] = "2"
    assert profile.env["A"] == "1"
    with pytest.raises(TypeError):
        profile.env["B"] = "3"  # type: ignore[index]


def test_a_profile_with_an_unknown_parser_cannot_be_made() -> None:
    with pytest.raises(ValueError, match="parser 'xml'"):
        HarnessProfile(name="t", command=("tool", "{prompt}"), parser="xml")


def test_config_table_with_every_key_makes_that_profile() -> None:
    profile = profile_from_config(
        "review",
        {
            "command": ["my-agent", "--json", "{args}", "--", "{prompt}"],
            "parser": "codex",
            "env": {"PYTHONUNBUFFERED": "1"},
            "timeout_s": 900,
            "cwd": "/srv/repo",
            "prompt_via": "arg",
            "max_concurrency": 3,
            "description": "reviews code",
        },
    )
    assert profile == HarnessProfile(
        name="review",
        command=("my-agent", "--json", "{args}", "--", "{prompt}"),
        parser="codex",
        env={"PYTHONUNBUFFERED": "1"},
        timeout_s=900.0,
        cwd="/srv/repo",
        prompt_via="arg",
        max_concurrency=3,
        description="reviews code",
    )
    assert isinstance(profile.timeout_s, float)


def test_config_command_string_is_split_like_a_shell_without_running_one() -> None:
    profile = profile_from_config("s", {"command": "agent --name 'two words' {prompt} $HOME"})
    assert profile.command == ("agent", "--name", "two words", "{prompt}", "$HOME")
    assert profile.parser == "lines"
    assert profile.prompt_via == "arg"


def test_config_stdin_profile_needs_no_prompt_placeholder() -> None:
    profile = profile_from_config("s", {"command": ["agent", "-"], "prompt_via": "stdin"})
    assert profile.prompt_via == "stdin"


def test_config_for_a_builtin_name_keeps_the_builtin_values_it_does_not_set() -> None:
    profile = profile_from_config("claude", {"timeout_s": 600, "env": {"CLAUDE_CONFIG_DIR": "/x"}})
    builtin = BUILTIN_PROFILES["claude"]
    assert profile.command == builtin.command
    assert profile.parser == "claude"
    assert profile.description == builtin.description
    assert (profile.timeout_s, dict(profile.env)) == (600.0, {"CLAUDE_CONFIG_DIR": "/x"})


BAD_TABLES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("unknown key", {"command": ["a", "{prompt}"], "timeout": 5}, ["'timeout'", "timeout_s", "command"]),
    ("missing command", {"parser": "claude"}, ["command", "required", "{prompt}"]),
    ("command not a list", {"command": 5}, ["command", "list of strings"]),
    ("command with a number", {"command": ["a", 1]}, ["command", "list of strings"]),
    ("empty command", {"command": []}, ["command", "program"]),
    ("empty program", {"command": ["", "{prompt}"]}, ["command", "program"]),
    ("unbalanced quote", {"command": "agent '{prompt}"}, ["command", "split"]),
    ("NUL in command", {"command": ["a\0b", "{prompt}"]}, ["command", "NUL"]),
    ("no prompt placeholder", {"command": ["agent", "run"]}, ["command", "{prompt}", "stdin"]),
    ("prompt placeholder with stdin", {"command": ["a", "{prompt}"], "prompt_via": "stdin"}, ["{prompt}", "stdin"]),
    ("unknown parser", {"command": ["a", "{prompt}"], "parser": "xml"}, ["parser", "'xml'", "claude", "lines"]),
    ("parser not a string", {"command": ["a", "{prompt}"], "parser": 1}, ["parser", "opencode"]),
    ("env not a table", {"command": ["a", "{prompt}"], "env": ["A=1"]}, ["env", "table"]),
    ("env value not a string", {"command": ["a", "{prompt}"], "env": {"A": 1}}, ["env", "A", "string"]),
    ("env name with =", {"command": ["a", "{prompt}"], "env": {"A=B": "1"}}, ["env", "'A=B'"]),
    ("env empty name", {"command": ["a", "{prompt}"], "env": {"": "1"}}, ["env", "name"]),
    ("negative timeout", {"command": ["a", "{prompt}"], "timeout_s": -1}, ["timeout_s", "more than 0"]),
    ("zero timeout", {"command": ["a", "{prompt}"], "timeout_s": 0}, ["timeout_s", "more than 0"]),
    ("timeout over 7 days", {"command": ["a", "{prompt}"], "timeout_s": 8 * 86400}, ["timeout_s", "7 days"]),
    ("timeout as text", {"command": ["a", "{prompt}"], "timeout_s": "60"}, ["timeout_s", "number"]),
    ("timeout as bool", {"command": ["a", "{prompt}"], "timeout_s": True}, ["timeout_s", "number"]),
    ("cwd not a string", {"command": ["a", "{prompt}"], "cwd": 3}, ["cwd", "path"]),
    ("empty cwd", {"command": ["a", "{prompt}"], "cwd": ""}, ["cwd", "path"]),
    ("unknown prompt_via", {"command": ["a", "{prompt}"], "prompt_via": "pipe"}, ["prompt_via", "arg", "stdin"]),
    ("zero max_concurrency", {"command": ["a", "{prompt}"], "max_concurrency": 0}, ["max_concurrency", "at least 1"]),
    ("float max_concurrency", {"command": ["a", "{prompt}"], "max_concurrency": 1.5}, ["max_concurrency", "integer"]),
    ("description not text", {"command": ["a", "{prompt}"], "description": 5}, ["description", "string"]),
]


@pytest.mark.parametrize(("case", "table", "words"), BAD_TABLES, ids=[case for case, _, _ in BAD_TABLES])
def test_config_errors_name_the_profile_the_key_and_what_is_allowed(
    case: str, table: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(ValueError) as info:
        profile_from_config("mine", table)
    message = str(info.value)
    assert "harness profile 'mine'" in message
    for word in words:
        assert word in message, f"{case}: {word!r} not in {message!r}"


def test_config_that_is_not_a_table_is_rejected() -> None:
    with pytest.raises(ValueError, match="harness profile 'mine': must be a table"):
        profile_from_config("mine", ["claude"])  # type: ignore[arg-type]


def test_every_parser_name_is_accepted_in_config() -> None:
    for parser in PARSERS:
        assert profile_from_config("p", {"command": ["a", "{prompt}"], "parser": parser}).parser == parser


def test_a_prompt_that_starts_with_a_dash_cannot_be_read_as_an_option() -> None:
    argv = BUILTIN_PROFILES["claude"].build_argv("--dangerously-skip-permissions do it", [])
    assert "--dangerously-skip-permissions" not in argv
    assert " --dangerously-skip-permissions do it" in argv
