"""The real Claude Code CLI connects a second effectd to a journal a first effectd already serves.

Two Claude Code sessions in one project each start their own `effectd serve` on `.effectd/journal.db`.
This runs the CLI as a user would: one server already running, then `claude mcp add` of a second
entry for the same journal, and `claude mcp get` must report it connected.

Needs the CLI: `$EFFECTD_CLAUDE` naming it, the pinned one `.ci/run` installs into `.ci/node` (`python -m
tests.model_server.clis`), or `claude` on PATH. Skipped with that reason otherwise. Claude Code's
configuration goes to a temporary HOME.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import anyio
import pytest

from tests.helpers.paths import REPO
from tests.helpers.processes import effectd_bin

PINNED = REPO / ".ci" / "node" / "node_modules" / ".bin" / "claude"
CLAUDE = os.environ.get("EFFECTD_CLAUDE") or (str(PINNED) if PINNED.exists() else None) or shutil.which("claude")
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.real,
    pytest.mark.skipif(
        CLAUDE is None,
        reason="the Claude Code CLI is not installed: python -m tests.model_server.clis (or npm install -g "
        "@anthropic-ai/claude-code@2.1), or set EFFECTD_CLAUDE to its `claude`",
    ),
]


async def test_claude_mcp_get_reports_a_second_server_on_a_served_journal_connected(tmp_path: Path) -> None:
    assert CLAUDE is not None
    project = tmp_path / "project"
    project.mkdir()
    env = {**os.environ, "HOME": str(tmp_path / "home")}
    (tmp_path / "home").mkdir()
    db = project / ".effectd" / "journal.db"
    first = await anyio.open_process(
        [effectd_bin(), "serve", "--db", str(db)], stdin=-1, stdout=-1, stderr=-1, cwd=project
    )
    try:
        with anyio.fail_after(20):  # the first server is up once it registered itself
            while not db.exists() or not _servers(db):  # noqa: ASYNC110 - another process's file
                await anyio.sleep(0.05)

        async def claude(*args: str) -> str:
            with anyio.fail_after(120):
                done = await anyio.run_process([CLAUDE, *args], check=False, cwd=project, env=env)
            output = done.stdout.decode() + done.stderr.decode()
            assert done.returncode == 0, f"claude {' '.join(args)} failed: {output}"
            return output

        await claude("mcp", "add", "effectd-second", "--", effectd_bin(), "serve", "--db", ".effectd/journal.db")
        report = await claude("mcp", "get", "effectd-second")
        assert "Connected" in report and "Failed" not in report, report
        assert first.returncode is None, "the first server stopped"
        servers = _servers(db)
        assert len(servers) == 2, f"the second server did not join the journal: {servers}"
    finally:
        first.terminate()
        with anyio.fail_after(10):
            await first.wait()


def _servers(db: Path) -> list[tuple[str, int]]:
    """The servers that registered on the journal (the row '' stands for those before sessions)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return list(conn.execute("select server_id, pid from servers where server_id != ''"))
    except sqlite3.OperationalError:  # not migrated yet
        return []
