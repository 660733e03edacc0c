"""The keeper without a cgroup: with containment "tree" (no writable cgroup v2, as for most users who
are not root), a SIGKILL of the server still kills every descendant of its effects within 1 s, found
by their session, their process group or the EFFECTD_EFFECT_ID in their environment."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from contextlib import suppress

from tests.helpers.processes import pid_alive

# A stand-in server: the local runner in "tree" mode starts one effect, and waits to be killed.
SERVER = r"""
import sys, anyio
from effectd.runner.base import Launch
from effectd.runner.local import LocalRunner

SCRIPT = (
    "(setsid sh -c 'echo daemon $$; exec sleep 100' &);"
    "(sh -c 'echo subshell $$; exec sleep 100' &);"
    "(setsid sh -c 'setsid sh -c \"echo deeper \\$\\$; exec sleep 100\" & wait' &);"
    "sleep 100"
)
ENV = {"EFFECTD_EFFECT_ID": "eff_tree", "PATH": "/usr/bin:/bin"}


async def main() -> None:
    runner = LocalRunner("tree")
    assert runner.containment == "tree"
    process = await runner.start(Launch(["/bin/sh", "-c", SCRIPT], ENV, effect_id="eff_tree"))
    seen = b""
    while seen.count(b"\n") < 3:
        seen += await process.read()
    sys.stdout.write(seen.decode() + f"leader {process.pid}\n")
    sys.stdout.flush()
    await anyio.sleep(100)

anyio.run(main)
"""


def test_the_keeper_kills_an_effects_descendants_found_without_a_cgroup_within_1s():
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        assert server.stdout is not None
        lines = [server.stdout.readline() for _ in range(4)]
        pids = [int(pid) for pid in re.findall(r"(?:daemon|subshell|deeper|leader) (\d+)", "".join(lines))]
        assert len(pids) == 4 and all(pid_alive(pid) for pid in pids), lines
        server.kill()
        server.wait()
        started = time.monotonic()
        while any(pid_alive(pid) for pid in pids) and time.monotonic() - started < 1.0:
            time.sleep(0.005)
        assert not any(pid_alive(pid) for pid in pids), "an effect's process outlived the server by 1 s"
    finally:
        server.kill()
        server.wait()
        server.stdout.close()  # type: ignore[union-attr]
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
