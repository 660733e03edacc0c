"""The real agent CLIs (from npm) under effectd, against the scripted model server, offline: one module,
parametrized over the CLI, for what every CLI must do the same way; each CLI's own facts are in its `Cli`.

Every run goes through ``dispatch_effect(harness=NAME)`` with the built-in profile. The per-call flags
are only what a user passes too (Claude Code's ``--allowedTools Bash`` and Gemini CLI's ``--approval-mode
yolo``: a headless run cannot answer a permission prompt). The server is reached through the effect's
``env`` (see ``tests/model_server/clis.py``: ``claude_env``, ``codex_env``, ...).

Behind the ``real`` marker: deselected by default, run by ``.ci/run`` (``pytest -m real``), which
installs the CLIs first (``python -m tests.model_server.clis``). Without npm or the registry they skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.mcp import call, wait_until
from tests.helpers.processes import pid_alive
from tests.model_server import Conversation, Error, Recorded, Script, Text, ToolCall
from tests.model_server.clis import PACKAGES, claude_env, codex_env, gemini_env, opencode_env, pi_env, require
from tests.model_server.harness_runs import STARTUP_S, run_with_progress, sleeping, sleeping_before_timeout
from tests.model_server.processes import effect_tree, finished, kill_marked
from tests.model_server.server import ModelServer

pytestmark = [pytest.mark.anyio, pytest.mark.real, pytest.mark.timeout(300)]

ANSWER = "The command printed hi, so the shell works."
ECHO_PROMPT = "TASK-ECHO: check the shell"
UUID = r"[0-9a-f-]{36}"


def _tool_results_anthropic(body: dict[str, Any]) -> str:
    return str(
        [
            block.get("content")
            for message in body["messages"]
            for block in (message["content"] if isinstance(message["content"], list) else [])
            if isinstance(block, dict) and block.get("type") == "tool_result"
        ]
    )


@dataclass(frozen=True)
class Cli:
    """One CLI: how its tool call is scripted, how it reaches the server, and what it reports."""

    name: str
    make_env: Callable[[ModelServer, Path], dict[str, str]]
    tool: str
    """Its shell tool's name, as the model calls it."""
    shell: Callable[[str], dict[str, Any]]
    """The shell tool's arguments for a command."""
    path: str
    """Where it sends the model requests."""
    command: list[str]
    """The effect's argv for ECHO_PROMPT (the profile's command line)."""
    turns: int
    session_id: str
    """A pattern of its session ids."""
    cost: float | None | str
    """The echo run's cost: a number, None (it reports none), or ">0" (its own price table)."""
    tool_output: Callable[[Recorded], str]
    """The second request's tool result, where "hi" must be."""
    args: list[str] = field(default_factory=list)
    model_requests: Callable[[list[Recorded]], list[Recorded]] = lambda sent: sent
    """The requests that are turns of the conversation (opencode also asks for a session title)."""
    timeout_s: float = 45.0
    """The timeout of the run that sleeps 300 s: long enough for the CLI to start and reach its tool call."""
    core: Callable[[dict[int, str], str], list[int]] = lambda tree, needle: list(tree)
    """The processes that must be dead when the cancel returns."""
    settle_s: float = 0.0
    """How long what is left of the effect beyond `core` may take to end on its own."""
    version: Callable[[str], bool] | None = None
    """Checks its `--version` output is the pinned version."""
    query: str | None = None
    """The query string of every model request."""
    only_model_requests: bool = False
    """Nothing but the model calls reach the server (Gemini CLI: no router classifier, no countTokens)."""
    tool_in_own_session: bool = False
    """Its shell tool runs in a session of its own, which only effectd's environment mark ties to the effect."""
    cli_processes: int = 1
    """How many processes of the CLI itself a run has (Gemini CLI relaunches itself with a larger heap)."""
    error_exit: int | str | None = None
    """The exit code of a run the API refused: a number, "nonzero", or None (not checked: pi and opencode
    report the error in their stream and may exit 0)."""
    stream_in_body: bool = True
    """Its requests ask for a stream in the body (Gemini CLI asks in the query, ``alt=sse``)."""
    progress_before_tool: bool = False
    """Its tool call is in the effect's progress by the time the tool runs (its stream is flushed first)."""
    error_in_result: bool = False
    """A refused run's error names the HTTP status."""
    retries_400: bool = True
    """Whether a 400 may be retried (Gemini CLI's is not: it retries only 429 and 5xx)."""

    def __str__(self) -> str:
        return self.name

    def script(self) -> Script:
        return Script(
            [
                Conversation(
                    "TASK-ECHO",
                    [ToolCall(self.tool, self.shell("echo hi"), text="I will run echo first."), Text(ANSWER, 0.3)],
                ),
                # A 400 fails at once (Gemini CLI retries 429 and 5xx with backoff).
                Conversation("TASK-BROKEN", [Error(400, "scripted: this model is switched off")]),
                # Claude Code blocks a standalone `sleep 30` ("use run_in_background"), so the sleep is in a list.
                Conversation("TASK-SLEEP", [ToolCall(self.tool, self.shell("echo waiting; sleep 30")), Text("slept")]),
                Conversation("TASK-LONG", [ToolCall(self.tool, self.shell("echo waiting; sleep 300"))]),
            ]
        )


def _codex_core(tree: dict[int, str], needle: str) -> list[int]:
    """The CLI, its sandbox and the tool. Codex also runs a shell-snapshot `bash -lc` in a session of its
    own (it reads the user's .bashrc); effectd's signals reach only the CLI's process group and codex does
    not end the snapshot on SIGTERM, so it can outlive the cancel by its own short life (seen: under 2 s)."""
    core = [pid for pid, cmd in tree.items() if "codex" in cmd.split(" ", 1)[0] or "bwrap" in cmd or cmd == needle]
    assert len(core) >= 3, tree
    return core


CLIS = [
    Cli(
        "claude",
        lambda server, home: claude_env(server, home),
        tool="Bash",
        shell=lambda cmd: {"command": cmd, "description": "Run it"},
        path="/v1/messages",
        command=["claude", "-p", ECHO_PROMPT, "--output-format", "stream-json", "--verbose", "--allowedTools", "Bash"],
        turns=2,
        session_id=UUID,
        cost=">0",
        tool_output=lambda request: _tool_results_anthropic(request.body),
        args=["--allowedTools", "Bash"],
        timeout_s=60.0,
        version=lambda out: out.startswith(PACKAGES["claude"][1]),
        query="beta=true",
        tool_in_own_session=True,
        progress_before_tool=True,
        error_exit=1,
        error_in_result=True,
    ),
    Cli(
        "codex",
        codex_env,
        tool="exec_command",
        # It waits up to a minute for the command before yielding.
        shell=lambda cmd: {"cmd": cmd, "yield_time_ms": 60_000},
        path="/v1/responses",
        command=["codex", "exec", "--json", "--skip-git-repo-check", "--", ECHO_PROMPT],
        turns=1,
        session_id=UUID,
        cost=None,
        tool_output=lambda request: str(
            [item["output"] for item in request.body["input"] if item.get("type") == "function_call_output"]
        ),
        core=_codex_core,
        settle_s=10.0,
        version=lambda out: out.strip() == f"codex-cli {PACKAGES['codex'][1]}",
        error_exit=1,
    ),
    Cli(
        "gemini",
        gemini_env,
        tool="run_shell_command",
        shell=lambda cmd: {"command": cmd},
        path="/v1beta/models/scripted-model:streamGenerateContent",
        command=["gemini", "-p", ECHO_PROMPT, "-o", "stream-json", "--approval-mode", "yolo"],
        turns=2,
        session_id=UUID,
        cost=None,
        tool_output=lambda request: str(
            [
                p["functionResponse"]["response"]
                for p in request.body["contents"][-1]["parts"]
                if "functionResponse" in p
            ]
        ),
        args=["--approval-mode", "yolo"],
        timeout_s=30.0,
        version=lambda out: out.strip() == PACKAGES["gemini"][1],
        query="alt=sse",
        only_model_requests=True,
        tool_in_own_session=True,
        progress_before_tool=True,
        stream_in_body=False,
        error_exit="nonzero",
        cli_processes=2,
        retries_400=False,
    ),
    Cli(
        "opencode",
        opencode_env,
        tool="bash",
        shell=lambda cmd: {"command": cmd, "description": "Run it"},
        path="/v1/messages",
        command=["opencode", "run", "--format", "json", ECHO_PROMPT],
        turns=2,
        session_id=r"ses_\w+",
        # From the per-million prices in the config: 2 x (120 x 3 + 30 x 15) / 1e6.
        cost=0.00162,
        tool_output=lambda request: str(request.body["messages"][-1]["content"]),
        model_requests=lambda sent: [r for r in sent if r.body.get("tools")],
    ),
    Cli(
        "pi",
        pi_env,
        tool="bash",
        shell=lambda cmd: {"command": cmd},
        path="/v1/messages",
        command=["pi", "--mode", "json", "-p", ECHO_PROMPT],
        turns=2,
        session_id=UUID,
        cost=0.00162,  # from the per-million prices in models.json, as opencode's
        tool_output=lambda request: str(request.body["messages"][-1]["content"]),
        timeout_s=30.0,
    ),
]
BY_NAME = {cli.name: cli for cli in CLIS}


@pytest.fixture(params=CLIS, ids=str)
def cli(request: pytest.FixtureRequest) -> Cli:
    spec: Cli = request.param
    return spec


@pytest.fixture
def binary(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The installed CLI (skips with the reason when it cannot be), on the server's PATH as after
    `npm install -g` (set before the engine starts)."""
    found = require(cli.name)
    monkeypatch.setenv("PATH", f"{found.parent}{os.pathsep}{os.environ['PATH']}")
    return found


@pytest.fixture
def model(cli: Cli, binary: Path) -> Iterator[ModelServer]:
    with ModelServer(cli.script()) as server:
        yield server


@pytest.fixture
def env(cli: Cli, model: ModelServer) -> Iterator[dict[str, str]]:
    """The CLI's environment, its home (config, state) outside the system's temporary folder, as a
    user's is: with bubblewrap installed, codex refuses to create its sandbox helper binaries under
    /tmp ("Refusing to create helper binaries under temporary dir"), so its shell tool never ran and
    three of its five tests failed wherever `bwrap` was on the machine."""
    base = Path.home() / ".cache" / "effectd-tests"
    base.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix=f"{cli.name}-home-", dir=base))
    try:
        yield cli.make_env(model, home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """The effect's working directory."""
    (tmp_path / "work").mkdir()
    return tmp_path / "work"


async def test_a_real_run_streams_progress_and_reports_its_result(cli, binary, client, model, env, work):
    effect_id, messages = await run_with_progress(
        client,
        {
            "harness": cli.name,
            "prompt": ECHO_PROMPT,
            "args": cli.args,
            "env": env,
            "cwd": str(work),
            "wait_s": 55,
        },
    )
    record = await finished(client, effect_id)  # on a very loaded machine it may outlast wait_s
    assert record["status"] == "succeeded", (record["error"], record["output_tail"][-1000:])
    assert record["command"] == cli.command
    outcome = record["result"]
    assert outcome["answer"] == ANSWER and outcome["is_error"] is False and outcome["turns"] == cli.turns
    assert outcome["usage"]["input_tokens"] == 240 and outcome["usage"]["output_tokens"] == 60
    assert re.fullmatch(cli.session_id, outcome["session_id"]), outcome["session_id"]
    if cli.cost == ">0":
        assert outcome["cost_usd"] > 0
    elif cli.cost is None:
        assert outcome["cost_usd"] is None
    else:
        assert outcome["cost_usd"] == pytest.approx(cli.cost)
    assert record["progress"]["tool_calls"] == 1 and record["progress"]["last_text"] == ANSWER
    # Progress arrived while it ran: the first turn's text, before the answer.
    assert any("I will run echo first." in m for m in messages), messages
    # The CLI really ran the tool and sent its output back as the next turn's input.
    sent = cli.model_requests(model.recorded(cli.path, match="TASK-ECHO"))
    assert [r.turn_index for r in sent] == [0, 1]
    if cli.stream_in_body:
        assert all(r.body["stream"] is True for r in sent)
    assert "hi" in cli.tool_output(sent[1])
    if cli.query is not None:
        assert all(r.query == cli.query for r in sent)
    if cli.only_model_requests:
        assert {r.path for r in model.recorded()} == {cli.path}
        assert sent[0].headers["x-goog-api-key"] == "scripted-key"


async def test_a_scripted_api_error_fails_the_effect_with_the_clis_own_message(cli, binary, client, model, env, work):
    record = await call(
        client, "dispatch_effect", harness=cli.name, prompt="TASK-BROKEN: x", args=cli.args, env=env, cwd=str(work)
    )
    record = await finished(client, record["effect_id"])
    assert record["status"] == "failed", record
    assert "scripted: this model is switched off" in record["error"], record["error"]
    assert model.recorded(match="TASK-BROKEN"), "the CLI never reached the scripted server"
    if cli.error_exit is not None:
        assert record["result"]["is_error"] is True
    if cli.error_exit == "nonzero":
        assert record["exit_code"] != 0
    elif cli.error_exit is not None:
        assert record["exit_code"] == cli.error_exit
    if cli.error_in_result:
        assert "400" in record["error"]
    if not cli.retries_400:
        assert model.turns_served("TASK-BROKEN") == [0], "a 400 is not retried"
    print(f"{cli.name}'s error:", record["error"], "exit", record["exit_code"])


async def test_cancelling_a_real_run_leaves_neither_the_cli_nor_its_tool_alive(cli, binary, client, model, env, work):
    record, tree = await sleeping(
        client, cli.name, "TASK-SLEEP: wait", "sleep 30", args=cli.args, env=env, cwd=str(work)
    )
    try:
        if cli.progress_before_tool:
            assert record["progress"]["tool_calls"] == 1
        if cli.cli_processes > 1:
            launched = sum(1 for cmd in tree.values() if f"{cli.name} -p TASK-SLEEP" in cmd)
            assert launched == cli.cli_processes, tree
        if cli.tool_in_own_session:
            tool = next(pid for pid, cmd in tree.items() if cmd == "sleep 30")
            assert os.getsid(tool) != os.getsid(record["pid"])
        started = time.monotonic()
        cancelled = await call(client, "cancel_effect", effect_id=record["effect_id"], grace_s=3)
        assert cancelled["status"] == "cancelled" and cancelled["cancel_reason"] == "user"
        assert time.monotonic() - started < 25
        assert not pid_alive(record["pid"]), "the CLI itself is gone"
        assert [pid for pid in cli.core(tree, "sleep 30") if pid_alive(pid)] == []
        await wait_until(lambda: effect_tree(record["effect_id"]) == {}, within_s=cli.settle_s or 0.01)
    finally:
        kill_marked(record["effect_id"])  # should an assertion fail, what the test leaves it ends itself


async def test_a_real_run_past_its_timeout_is_cancelled_with_its_tree(cli, binary, client, model, env, work):
    # The timeout counts from the dispatch: a run whose CLI starts too slowly for it is tried again with more.
    assert cli.timeout_s <= STARTUP_S
    record, tree = await sleeping_before_timeout(
        client,
        cli.name,
        "TASK-LONG: wait",
        "sleep 300",
        [cli.timeout_s, STARTUP_S],
        args=cli.args,
        env=env,
        cwd=str(work),
        grace_s=3,
    )
    try:
        record = await finished(client, record["effect_id"])
        assert record["status"] == "cancelled" and record["cancel_reason"] == "timeout", record
        assert not pid_alive(record["pid"]), "the CLI itself is gone"
        assert [pid for pid in cli.core(tree, "sleep 300") if pid_alive(pid)] == []
        await wait_until(lambda: effect_tree(record["effect_id"]) == {}, within_s=cli.settle_s or 0.01)
    finally:
        kill_marked(record["effect_id"])


@pytest.mark.parametrize("name", [cli.name for cli in CLIS if cli.version is not None])
def test_the_version_run_is_the_pinned_one(name: str) -> None:
    cli = BY_NAME[name]
    assert cli.version is not None
    out = subprocess.run([str(require(name)), "--version"], capture_output=True, text=True, timeout=60).stdout
    assert cli.version(out), out


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")
@pytest.mark.parametrize("cli", [BY_NAME["claude"]], ids=str)
async def test_claude_runs_sandboxed_with_network_to_its_model_only(cli, binary, client, model, env, work):
    """`sandbox: true` on the claude profile: network to the scripted server (its ANTHROPIC_BASE_URL) only,
    its config folder writable. The run works as without a sandbox, and the shell tool inside cannot reach
    the same server other than through effectd's proxy."""
    record = await call(
        client,
        "dispatch_effect",
        harness="claude",
        prompt=ECHO_PROMPT,
        args=cli.args,
        env=env,
        cwd=str(work),
        sandbox=True,
        wait_s=55,
    )
    record = await finished(client, record["effect_id"])
    assert record["status"] == "succeeded", (record["error"], record["output_tail"][-1000:])
    assert record["result"]["answer"] == ANSWER
    port = model.url.rsplit(":", 1)[1].split("/")[0]
    assert record["sandbox"]["network"] == {"allow": ["api.anthropic.com:443", f"127.0.0.1:{port}"]}
    assert env["CLAUDE_CONFIG_DIR"] in record["sandbox"]["write"]
    sent = cli.model_requests(model.recorded(cli.path, match="TASK-ECHO"))
    assert [r.turn_index for r in sent] == [0, 1] and "hi" in cli.tool_output(sent[1])
