"""What processes an effect has: every live process whose environment names the effect."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mcp import Client

from tests.helpers.mcp import call
from tests.helpers.processes import pid_alive


def effect_tree(effect_id: str) -> dict[int, str]:
    """Live processes started for ``effect_id`` (the CLI and its tool children), with their command lines."""
    marker = f"EFFECTD_EFFECT_ID={effect_id}".encode()
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if marker not in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                continue
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if pid_alive(int(entry)):
            found[int(entry)] = cmdline.strip()
    return found


def kill_marked(effect_id: str) -> None:
    """SIGKILLs every live process of the effect: a test's own cleanup, so nothing outlives it."""
    import signal

    for pid in effect_tree(effect_id):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def running(effect_id: str, needle: str) -> dict[int, str]:
    """The effect's processes whose command line contains ``needle``."""
    return {pid: cmd for pid, cmd in effect_tree(effect_id).items() if needle in cmd}


async def finished(client: Client, effect_id: str, within_s: float = 300) -> dict[str, Any]:
    """The effect's record once it has ended (await_group, 55 s at a time, up to ``within_s``)."""
    import anyio

    with anyio.fail_after(within_s):
        while (record := await call(client, "poll_effect", effect_id=effect_id))["finished_at"] is None:
            await call(client, "await_group", effect_ids=[effect_id], mode="all", timeout_s=55)
    return dict(record)
