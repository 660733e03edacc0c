"""The guard of a node executor: when the executor dies, whatever its effects left on the node dies too.

A Ray actor can die at any moment (its owner, the server, was SIGKILLed; its node is drained; `ray
kill`). Its effects' direct children go with it (parent-death signal), but processes that moved to
a session of their own would be left to init. The executor starts this guard beside it and tells it,
one line each on the guard's stdin, which effects run (`+ID`) and which ended (`-ID`). When stdin
closes (the executor is gone, however it died), the guard kills every process of the effects still
running, as the local runner kills leftovers at start: by cgroup, by the effect id in the
environment, with their descendants. Then it exits.
"""

from __future__ import annotations

import sys
from pathlib import Path

from effectd.runner.base import RecordedProcess
from effectd.runner.contain import kill_leftovers


def main() -> int:
    cgroup_root = Path(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] else None
    running: set[str] = set()
    for line in sys.stdin.buffer:
        text = line.decode("utf-8", "replace").strip()
        if text.startswith("+"):
            running.add(text[1:])
        elif text.startswith("-"):
            running.discard(text[1:])
    if running:
        kill_leftovers([RecordedProcess(effect_id) for effect_id in sorted(running)], cgroup_root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
