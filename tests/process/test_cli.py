"""The command line's reading and cancelling subcommands find the journal as `effectd serve` does.

Each test runs the real `effectd` program from a project directory whose effectd.toml names the
database (`db = "state/journal.db"`), with no --db and no $EFFECTD_DB: the journal at the default
`./.effectd/journal.db` does not exist, so a command that ignores the file finds nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import anyio
import pytest

from effectd.config.settings import Settings
from effectd.errors import JournalUnusableError
from effectd.journal.reader import JournalReader
from tests.helpers.mcp import call, connected
from tests.helpers.paths import REPO
from tests.helpers.processes import SLEEP, effectd_bin, py

pytestmark = pytest.mark.anyio

CONFIG = 'db = "state/journal.db"\n'


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project directory with an effectd.toml that names its journal, and no $EFFECTD_DB or $EFFECTD_CONFIG."""
    monkeypatch.delenv("EFFECTD_DB", raising=False)
    monkeypatch.delenv("EFFECTD_CONFIG", raising=False)
    (tmp_path / "effectd.toml").write_text(CONFIG)
    return tmp_path


def configured(settings: Settings, project: Path) -> Settings:
    """The test's settings on the journal that the project's effectd.toml names."""
    return replace(settings, db=project / "state" / "journal.db")


async def effectd(project: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Runs `effectd ARGS` in the project directory; its exit code, stdout and stderr."""
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [effectd_bin(), *args], cwd=project, env={**os.environ, **(env or {})}, check=False
        )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_ls_show_logs_and_journal_read_the_db_named_in_effectd_toml(settings, project):
    async with connected(configured(settings, project)) as (_, client):
        record = await call(client, "dispatch_effect", command=py("print('configured journal')"), label="hello")
    assert record["status"] == "succeeded"
    effect_id = record["effect_id"]

    code, out, err = await effectd(project, "ls")
    assert code == 0, err
    assert effect_id in out and "hello" in out
    code, out, err = await effectd(project, "ls", "--json")
    assert code == 0, err
    assert [r["effect_id"] for r in json.loads(out)] == [effect_id]
    code, out, err = await effectd(project, "show", effect_id)
    assert code == 0, err
    assert json.loads(out)["status"] == "succeeded"
    code, out, err = await effectd(project, "logs", effect_id)
    assert (code, out) == (0, "configured journal\n"), err
    code, out, err = await effectd(project, "journal")
    assert code == 0, err
    assert "EFFECT_RESOLVED" in out and effect_id in out
    assert not (project / ".effectd").exists(), "a reading command created the default journal"


async def test_db_and_effectd_db_still_come_before_the_config_file(settings, project, tmp_path_factory):
    async with connected(configured(settings, project)) as (_, client):
        record = await call(client, "dispatch_effect", command=py("pass"))
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "other.db"

    code, out, err = await effectd(project, "show", record["effect_id"], "--db", str(elsewhere))
    assert code == 1 and f"unknown id {record['effect_id']}" in err and str(elsewhere) in err
    code, out, err = await effectd(project, "ls", env={"EFFECTD_DB": str(elsewhere)})
    assert (code, out.strip()) == (0, f"no effects in {elsewhere}"), err
    code, out, err = await effectd(project, "ls")
    assert code == 0 and record["effect_id"] in out, err


async def test_config_names_another_configuration_file_for_the_reading_commands(settings, project):
    (project / "effectd.toml").unlink()
    (project / "other.toml").write_text(CONFIG)
    async with connected(configured(settings, project)) as (_, client):
        record = await call(client, "dispatch_effect", command=py("pass"))

    code, out, err = await effectd(project, "show", record["effect_id"], "--config", "other.toml")
    assert code == 0, err
    assert json.loads(out)["effect_id"] == record["effect_id"]
    code, out, err = await effectd(project, "ls", env={"EFFECTD_CONFIG": str(project / "other.toml")})
    assert code == 0 and record["effect_id"] in out, err


@pytest.mark.parametrize("subcommand", [["ls"], ["show", "eff_x"], ["logs", "eff_x"], ["journal"], ["cancel", "eff_x"]])
async def test_a_bad_configuration_stops_every_reading_command_with_exit_2(project, subcommand):
    (project / "effectd.toml").write_text('db = "state/journal.db"\ncolour = "blue"\n')
    code, out, err = await effectd(project, *subcommand)
    assert code == 2 and out == ""
    assert err.startswith("effectd: unknown config keys ['colour']"), err

    code, out, err = await effectd(project, *subcommand, "--config", "missing.toml")
    assert code == 2 and err.startswith("effectd: config file missing.toml does not exist"), err


async def test_cancel_asks_the_live_server_of_the_db_named_in_effectd_toml(settings, project):
    async with connected(configured(settings, project)) as (_, client):
        record = await call(client, "dispatch_effect", command=py(SLEEP, "60"), background=True)
        code, out, err = await effectd(project, "cancel", record["effect_id"], "--reason", "from the cli")
        assert code == 0, err
        cancelled = json.loads(out)
        assert (cancelled["status"], cancelled["cancel_reason"]) == ("cancelled", "user")
        assert cancelled["cancel_message"] == "from the cli"


async def test_cancel_without_a_live_server_cancels_a_waiting_effect_through_the_engine(settings, project):
    async with connected(configured(settings, project), max_concurrency=1, keep_queued=True) as (_, client):
        await call(client, "dispatch_effect", command=py(SLEEP, "60"), background=True)
        queued = await call(client, "dispatch_effect", command=py("pass"), background=True)
    assert queued["status"] == "queued"
    reader = JournalReader(project / "state" / "journal.db")
    assert (reader.effect(queued["effect_id"]) or {}).get("status") == "queued"

    code, out, err = await effectd(project, "cancel", queued["effect_id"], "--reason", "nobody runs it")
    assert code == 2, err
    assert "no live server owns the database" in err and "cancelled in the journal directly" in err
    record = json.loads(out)
    assert (record["status"], record["cancel_message"]) == ("cancelled", "nobody runs it")
    events = [e["type"] for e in reader.events(run_id=queued["run_id"]) if e["effect_id"] == queued["effect_id"]]
    assert events[-1] == "EFFECT_CANCELLED" and events.count("EFFECT_CANCELLED") == 1


async def test_python_m_effectd_cli_runs_the_command(project):
    with anyio.fail_after(60):
        done = await anyio.run_process([sys.executable, "-m", "effectd.cli", "ls"], cwd=project, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().strip() == f"no effects in {project / 'state' / 'journal.db'}"


def test_effectd_version_prints_the_installed_version():
    from importlib.metadata import version

    done = subprocess.run([effectd_bin(), "--version"], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, f"effectd {version('effectd')}\n"), done.stderr


def test_the_command_line_holds_no_sql():
    modules = sorted((REPO / "server" / "effectd" / "cli").glob("*.py"))
    assert len(modules) > 3
    for module in modules:
        text = module.read_text()
        assert "sqlite" not in text and not re.search(r"\b(SELECT|INSERT|UPDATE|DELETE)\b", text), module


# --- the reader ----------------------------------------------------------------------------------


def test_the_journal_reader_reads_a_missing_file_as_empty_and_never_creates_it(tmp_path):
    reader = JournalReader(tmp_path / "none" / "journal.db")
    assert reader.effect("eff_x") is None and reader.effects() == [] and reader.flow("flw_x") is None
    assert reader.events() == [] and reader.event_count() == 0 and reader.control_answer(1) is None
    with pytest.raises(JournalUnusableError, match="journal .*journal.db cannot be used: .*cannot be opened"):
        reader.request_control("eff_x", "cancel")
    assert not (tmp_path / "none").exists()


async def test_the_journal_reader_filters_effects_and_events(settings):
    async with connected(settings) as (_, client):
        first = await call(client, "dispatch_effect", command=py("pass"), group="a")
        second = await call(client, "dispatch_effect", command=py("raise SystemExit(3)"), group="b")
    reader = JournalReader(settings.db)
    assert [r["effect_id"] for r in reader.effects()] == [second["effect_id"], first["effect_id"]]
    assert [r["effect_id"] for r in reader.effects(group="a")] == [first["effect_id"]]
    assert [r["effect_id"] for r in reader.effects(status="failed")] == [second["effect_id"]]
    assert [r["effect_id"] for r in reader.effects(limit=1)] == [second["effect_id"]]
    events = reader.events()
    assert reader.event_count() == len(events) and [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert reader.events(events[-2]["seq"]) == events[-1:]
    assert all(e["run_id"] == first["run_id"] for e in reader.events(run_id=first["run_id"]))
