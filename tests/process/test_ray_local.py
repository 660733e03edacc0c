"""`effectd serve --runner ray` with no address: the server starts a local Ray over stdio, runs effects
in it, and stops it when it ends (no Ray process of its own is left)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mcp import Client

from tests.helpers.mcp import call, wait_until
from tests.helpers.processes import stdio_params

pytest.importorskip("ray", reason="the Ray runner's tests need Ray: pip install -e '.[ray]'")

# One local Ray at a time on this machine: every Ray test runs on the same xdist worker.
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240), pytest.mark.xdist_group("ray")]


def ray_processes() -> set[int]:
    """Live raylet and GCS server processes on this machine."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                name = Path(f"/proc/{entry}/comm").read_text().strip()
            except OSError:
                continue
            if name in ("raylet", "gcs_server"):
                found.add(int(entry))
    return found


async def test_with_no_address_the_server_starts_a_local_ray_and_stops_it_with_itself(tmp_path):
    before = ray_processes()
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    params = stdio_params(tmp_path / "j.db", "--allow-any-command", "--runner", "ray")
    params.env = env
    async with Client(params, read_timeout_seconds=180) as client:
        record = await call(client, "dispatch_effect", command=["sh", "-c", "echo on ray"], timeout_s=120)
        started = ray_processes() - before
    assert record["status"] == "succeeded" and record["node"].startswith("ray:")
    assert started, "no local Ray was started"
    await wait_until(lambda: not (ray_processes() & started), within_s=60)
