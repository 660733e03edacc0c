"""A tee in front of an stdio MCP server: records every JSON-RPC line each way, passes them on unchanged.

Run as a script (it imports nothing from the repository, so an MCP client can start it by path)::

    python tests/model_server/wire.py WIRE.jsonl -- effectd serve --db journal.db

Each line of ``WIRE.jsonl`` is ``{"dir": "c2s" | "s2c", "msg": <the JSON-RPC message>}``.
The server's exit code is the tee's; when the client closes stdin, the server's stdin closes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any


def read_wire(path: Path) -> list[dict[str, Any]]:
    """The recorded messages, in order, each as ``{"dir": ..., "msg": ...}``."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _pump(source: IO[bytes], sink: IO[bytes], direction: str, log: IO[str], lock: threading.Lock) -> None:
    for line in iter(source.readline, b""):
        sink.write(line)
        sink.flush()
        try:
            message = json.loads(line)
        except ValueError:
            message = {"unparsed": line.decode(errors="replace")}
        with lock:
            log.write(json.dumps({"dir": direction, "msg": message}) + "\n")
            log.flush()
    sink.close()


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: wire.py WIRE.jsonl -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    lock = threading.Lock()
    with open(argv[0], "a") as log:
        server = subprocess.Popen(argv[2:], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert server.stdin is not None and server.stdout is not None
        to_server = threading.Thread(target=_pump, args=(sys.stdin.buffer, server.stdin, "c2s", log, lock), daemon=True)
        to_server.start()
        _pump(server.stdout, sys.stdout.buffer, "s2c", log, lock)
        return server.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
