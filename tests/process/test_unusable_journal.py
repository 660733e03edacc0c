"""A journal that cannot be used (corrupt, truncated, newer, read-only, not a file): `effectd serve`
(stdio and --http) and every reader exit 2 within 5 s with one line naming the file and the problem,
and nothing in the file changes. And the journal's files are private: 0600, the output directory 0700."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
from mcp import ClientSession
from mcp.client.stdio import stdio_client

from effectd.config.settings import Settings
from effectd.engine.core import Engine
from effectd.errors import JournalUnusableError
from tests.helpers.disks import mount_tmpfs, unmount
from tests.helpers.mcp import call, connected
from tests.helpers.processes import effectd_bin, py, stdio_params

EXIT_WITHIN_S = 5.0


def real_journal(db: Path) -> None:
    """A journal the server wrote: a few effects, closed cleanly."""

    async def write() -> None:
        settings = Settings(db=db, allow_any_command=True)
        async with connected(settings) as (_, client):
            for _ in range(3):
                await call(client, "dispatch_effect", command=py("print('x' * 1000)"), wait_s=20)

    anyio.run(write)


def not_sqlite(db: Path) -> str:
    db.write_bytes(os.urandom(8192))
    return "it is not an SQLite database"


def corrupt_pages(db: Path) -> str:
    real_journal(db)
    with open(db, "r+b") as file:
        file.seek(4096)
        file.write(os.urandom(8192))  # pages 2 and 3 overwritten with garbage
    return "it is corrupt or truncated"


def truncated(db: Path) -> str:
    real_journal(db)
    os.truncate(db, db.stat().st_size // 2)
    return "it is corrupt or truncated"


def newer(db: Path) -> str:
    real_journal(db)
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO _migrations (name, applied_at) VALUES ('m999_from_a_newer_effectd', 'now')")
    return "written by a newer effectd (schema migration 'm999_from_a_newer_effectd'"


def a_directory(db: Path) -> str:
    db.mkdir()
    return "it is not a regular file"


BROKEN: dict[str, Callable[[Path], str]] = {
    "not_sqlite": not_sqlite,
    "corrupt_pages": corrupt_pages,
    "truncated": truncated,
    "newer_schema": newer,
    "a_directory": a_directory,
}


def fingerprint(db: Path) -> str:
    if db.is_dir():
        return "dir"
    return hashlib.sha256(db.read_bytes()).hexdigest()


@pytest.fixture(params=sorted(BROKEN))
def broken(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A journal broken one way, and the words that name its problem."""
    db = tmp_path / "journal.db"
    problem = BROKEN[request.param](db)
    before, locked = fingerprint(db), db.with_name("journal.db.lock").exists()
    yield db, problem
    assert fingerprint(db) == before, "the unusable journal was changed"
    assert db.with_name("journal.db.lock").exists() == locked, "a lock file was made for an unusable journal"


@pytest.fixture
def read_only_journal(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A sound journal on a file system mounted read-only."""
    disk = tmp_path / "ro"
    mount_tmpfs(disk, "4m")
    try:
        real_journal(disk / "journal.db")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True, capture_output=True)
        before = fingerprint(disk / "journal.db")
        yield disk / "journal.db", "it is on a read-only file system"
        assert fingerprint(disk / "journal.db") == before
    finally:
        unmount(disk)


def run_effectd(*args: str) -> tuple[int, str, float]:
    """Runs `effectd ARGS` (stdin closed); returns its exit status, its stderr and how long it took."""
    started = time.monotonic()
    done = subprocess.run([effectd_bin(), *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    return done.returncode, done.stderr, time.monotonic() - started


def assert_refused(db: Path, problem: str, returncode: int, stderr: str, took: float) -> None:
    assert returncode == 2, (returncode, stderr)
    assert took < EXIT_WITHIN_S, f"took {took:.1f} s"
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"effectd: journal {db} cannot be used: ") and problem in lines[0], lines[0]


def test_effectd_ls_on_an_unusable_journal_exits_2_naming_the_file_and_the_problem(
    broken: tuple[Path, str],
) -> None:
    db, problem = broken
    assert_refused(db, problem, *run_effectd("ls", "--db", str(db)))


@pytest.mark.parametrize("command", [["show", "eff_x"], ["logs", "eff_x"], ["journal"], ["cancel", "eff_x"]])
def test_every_reader_on_a_corrupt_journal_exits_2_naming_the_file(tmp_path: Path, command: list[str]) -> None:
    db = tmp_path / "journal.db"
    problem = truncated(db)
    before = fingerprint(db)
    assert_refused(db, problem, *run_effectd(*command, "--db", str(db)))
    assert fingerprint(db) == before


def test_effectd_serve_on_an_unusable_journal_exits_2_naming_the_file(broken: tuple[Path, str]) -> None:
    db, problem = broken
    assert_refused(db, problem, *run_effectd("serve", "--db", str(db)))


def test_effectd_serve_http_on_an_unusable_journal_exits_2_naming_the_file(tmp_path: Path) -> None:
    db = tmp_path / "journal.db"
    problem = newer(db)
    returncode, stderr, took = run_effectd("serve", "--http", "--port", "0", "--token", "t" * 32, "--db", str(db))
    assert_refused(db, problem, returncode, stderr, took)


@pytest.mark.anyio
async def test_a_stdio_client_of_a_server_on_an_unusable_journal_sees_it_exit_at_once(
    broken: tuple[Path, str], tmp_path: Path
) -> None:
    db, problem = broken
    errors = tmp_path / "stderr.txt"
    started = time.monotonic()
    with open(errors, "w") as errlog, pytest.raises(Exception):  # noqa: ASYNC230, B017, PT011 - any client error
        with anyio.fail_after(EXIT_WITHIN_S + 5):
            async with stdio_client(stdio_params(db), errlog=errlog) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
    assert time.monotonic() - started < EXIT_WITHIN_S
    text = errors.read_text()
    assert f"effectd: journal {db} cannot be used: " in text and problem in text and "Traceback" not in text


def test_a_journal_on_a_read_only_file_system_stops_serve_and_ls_with_status_2(
    read_only_journal: tuple[Path, str],
) -> None:
    db, problem = read_only_journal
    assert_refused(db, problem, *run_effectd("ls", "--db", str(db)))
    assert_refused(db, problem, *run_effectd("serve", "--db", str(db)))
    new = db.with_name("sub") / "journal.db"  # nor can a new journal be made there
    returncode, stderr, _ = run_effectd("serve", "--db", str(new))
    assert returncode == 2 and f"journal {new} cannot be used: " in stderr and "read-only file system" in stderr


@pytest.mark.anyio
async def test_the_engine_refuses_a_newer_journal_before_writing_anything(settings: Settings) -> None:
    await anyio.to_thread.run_sync(newer, settings.db)
    before = fingerprint(settings.db)
    with pytest.raises(JournalUnusableError, match="newer effectd"):
        async with Engine.open(settings):
            pass
    assert fingerprint(settings.db) == before


@pytest.mark.anyio
async def test_journal_files_are_created_0600_and_the_output_directory_0700(settings: Settings) -> None:
    old = os.umask(0o022)  # the usual umask, which would give 0644 and 0755
    try:
        async with connected(settings) as (_, client):
            await call(client, "dispatch_effect", command=py("print('secret')"), wait_s=20)
            db = settings.db
            files = [
                db,
                db.with_name(db.name + "-wal"),
                db.with_name(db.name + "-shm"),
                db.with_name(db.name + ".lock"),
            ]
            modes = {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in files}
            assert modes == {path.name: "0o600" for path in files}
            assert oct(stat.S_IMODE(settings.output_dir.stat().st_mode)) == "0o700"
    finally:
        os.umask(old)


@pytest.mark.anyio
async def test_an_existing_journal_others_could_read_is_made_private(settings: Settings) -> None:
    async with connected(settings):
        pass
    os.chmod(settings.db, 0o644)
    os.chmod(settings.output_dir, 0o755)
    async with connected(settings) as (_, client):
        await call(client, "dispatch_effect", command=py("pass"), wait_s=20)
        assert stat.S_IMODE(settings.db.stat().st_mode) == 0o600
        assert stat.S_IMODE(settings.db.with_name(settings.db.name + "-wal").stat().st_mode) == 0o600
        assert stat.S_IMODE(settings.output_dir.stat().st_mode) == 0o700


def test_the_readers_still_read_a_journal_that_does_not_exist_as_empty(tmp_path: Path) -> None:
    db = tmp_path / "none" / "journal.db"
    returncode, stdout_or_err, _ = run_effectd("ls", "--db", str(db))
    assert returncode == 0, stdout_or_err
    assert not db.parent.exists()
