"""A small tmpfs mounted for a test: a full disk, done for real (needs root; the tests skip otherwise)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def mount_tmpfs(where: Path, size: str) -> None:
    """Mounts a tmpfs of `size` at `where`, or skips the test (saying why) where mounting is refused."""
    if shutil.which("mount") is None:
        pytest.skip("no `mount` program to make a small disk with")
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip() or done.returncode}")


def unmount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)
