"""`effectd doctor`: what this host supports (each limit, the sandbox, containment, git, the journal), read
from the real program; it exits 0 whatever is missing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from effectd.runner.cgroups import Cgroups
from effectd.runner.controllers import Controllers
from tests.helpers.processes import effectd_bin


def doctor(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    """Runs `effectd doctor ARGS`; its exit code, its lines by first word, and its whole output."""
    done = subprocess.run(
        [effectd_bin(), "doctor", *args],
        cwd=tmp_path,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    return done.returncode, lines, done.stdout


def test_doctor_names_each_limits_cgroup_the_sandbox_containment_git_and_the_journal(tmp_path: Path) -> None:
    config = tmp_path / "effectd.toml"
    config.write_text('db = "state/j.db"\n[limits]\npids = 64\n')
    code, lines, out = doctor(tmp_path, "--config", str(config))
    assert code == 0, out
    v2 = Cgroups.find()
    host = Controllers.find(v2.root if v2 is not None else None, prepare=False)
    for limit in ("memory_mb", "pids", "cpu"):
        place = host.places.get(limit)
        assert (f"yes, cgroup v{place.version} {place.controller}: {place.root}" if place else "no: ") in lines[limit]
    assert "defaults: pids = 64" in out
    assert lines["sandbox"].split()[1] in ("yes,", "no:")
    # A real keeper was started and ended when its pipe closed: this host kills what a dead server leaves.
    assert lines["keeper"].split()[1] == "yes", lines["keeper"]
    assert ("cgroup v2" if v2 is not None else "subreaper") in lines["containment"]
    assert lines["git"].startswith("git") and "git version" in lines["git"]
    assert f"{tmp_path / 'state' / 'j.db'} (not created yet)" in lines["journal"]
    assert not (tmp_path / "state").exists(), "doctor created the journal"


def test_doctor_says_what_is_missing_and_still_exits_0(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"  # a PATH with neither bwrap nor git
    bin_dir.mkdir()
    code, lines, out = doctor(tmp_path, "--db", str(tmp_path / "j.db"), env={"PATH": str(bin_dir)})
    assert code == 0, out
    missing = "no: bubblewrap ('bwrap') is not on its PATH; install bubblewrap (Debian/Ubuntu"
    assert missing in lines["sandbox"], lines["sandbox"]
    assert "no: git is not on PATH" in lines["git"]
