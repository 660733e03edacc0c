"""The start-up cache: `effectd serve` over stdio answers a client's first requests while the SDK imports.

Importing the MCP SDK takes most of a second (docs/operating/performance.md, "Start-up"), and a client
cannot call a tool before it has `tools/list`. So a small front, in the standard library only (no `mcp`,
no pydantic: nothing that costs time before it answers), reads stdin from the first instant. A request
whose answer is static (`STATIC`) and is in the cache is answered at once, with the request's own id.
Every line read is kept; when the real server is ready (`Front.handoff`), it reads them first, in order,
then stdin itself, so its session sees `initialize` and everything after it exactly as without the cache.
Its answers to the requests the front answered are dropped (`Tracker.answer`), never sent twice. Nothing
else is answered early: `tools/call` and every other request wait for the server and its recovery.

The cache is a file per key under `$XDG_CACHE_HOME/effectd` (else `~/.cache/effectd`), written atomically
from the real server's own answers. The key is everything the answer depends on: effectd's code (its
version and its modules' files), the installed SDK and pydantic, the Python, the command line (less the
journal's path), the configuration file's contents, the environment variables effectd reads, the working
directory, the request's method and params and, after `initialize`, that request's params (the protocol
version and capabilities the session was opened with). If a live answer still differs from the cached one
that was sent, the file is replaced and a warning logged. A cache that cannot be read or written is
ignored; `EFFECTD_NO_STARTUP_CACHE=1` turns the front off.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import sys
import threading
from pathlib import Path
from typing import Any

from effectd.config.locate import config_path

# Imported where used, not here: logging, tempfile and dataclasses would double what the front loads
# before its first answer (tests/e2e/test_startup_cache.py checks it loads neither the SDK nor pydantic).

OPT_OUT = "EFFECTD_NO_STARTUP_CACHE"
# The requests whose answers depend on nothing but the key: the two eras' handshakes and the static lists.
STATIC = frozenset({"initialize", "server/discover", "tools/list", "prompts/list", "resources/templates/list"})
FORMAT = 1  # the cache file's layout; part of the key
WATCHED_LINES = 32  # input lines the real server's reader still shows the tracker (to fill a cold cache)
WATCHED_ANSWERS = 256  # the server's messages looked at, at most, for the answers to those (one never sent)
LARGEST_LINE = 1 << 16  # a longer line is no static request: not parsed
# Read by effectd or its runner, so part of the key; the journal's path and secrets are not.
UNKEYED_ENV = frozenset({"EFFECTD_DB", "EFFECTD_TOKEN", OPT_OUT})
DISTRIBUTIONS = ("effectd", "mcp", "mcp_types", "pydantic", "pydantic_core")


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/effectd, else ~/.cache/effectd."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "effectd"


def _option(argv: list[str], name: str) -> str | None:
    for index, arg in enumerate(argv):
        if arg == name and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


def _without_db(argv: list[str]) -> list[str]:
    """The command line less the journal's path, which changes no answer the cache holds."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--db":
            skip = True
        elif not arg.startswith("--db="):
            kept.append(arg)
    return kept


def _code_fingerprint() -> list[Any]:
    """effectd's own modules (path, size, mtime) and the installed distributions (their dist-info names,
    which carry the versions): an edited checkout or another version is another key."""
    files: list[Any] = []
    import effectd  # a namespace package: its portions, server/ and tools/

    for root in sorted(effectd.__path__):
        for folder, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(names):
                if name.endswith(".py"):
                    stat = os.stat(os.path.join(folder, name))
                    files.append([os.path.relpath(os.path.join(folder, name), root), stat.st_size, stat.st_mtime_ns])
    dists: list[str] = []
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        dists += sorted(n for n in names if n.endswith(".dist-info") and n.split("-", 1)[0].lower() in DISTRIBUTIONS)
    return [sys.version, dists, files]


def base_key(argv: list[str]) -> str:
    """The part of every key that does not depend on the request: code, configuration, environment."""
    flag = _option(argv, "--config")
    path = config_path(Path(flag) if flag else None)
    try:
        config = path.read_bytes().decode("utf-8", "replace") if path is not None else None
    except OSError as exc:
        config = f"unreadable: {exc}"
    env = sorted(
        (name, value)
        for name, value in os.environ.items()
        if (name.startswith("EFFECTD_") and name not in UNKEYED_ENV) or name == "RAY_ADDRESS"
    )
    described = [FORMAT, _code_fingerprint(), _without_db(argv), str(path), config, env, os.getcwd()]
    return hashlib.sha256(json.dumps(described).encode()).hexdigest()


class Store:
    """The cache's files, one per key. Any failure to read or write one is a miss, never an error."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _file(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def read(self, key: str) -> dict[str, Any] | None:
        try:
            with open(self._file(key), "rb") as file:
                entry = json.load(file)
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("key") != key or not isinstance(entry.get("result"), dict):
            return None
        result: dict[str, Any] = entry["result"]
        return result

    def write(self, key: str, method: str, result: dict[str, Any]) -> None:
        """Written atomically: a reader sees the old file or the new one, never part of one."""
        import tempfile

        temporary = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            with tempfile.NamedTemporaryFile("w", dir=self.directory, suffix=".tmp", delete=False) as file:
                temporary = file.name
                json.dump({"key": key, "method": method, "result": result}, file, ensure_ascii=False)
            os.replace(temporary, self._file(key))
            temporary = None
        except OSError:  # a read-only home, a full disk: the next spawn answers live again
            pass
        finally:
            if temporary is not None:
                try:
                    os.unlink(temporary)
                except OSError:
                    pass

    def forget(self, key: str) -> None:
        try:
            os.unlink(self._file(key))
        except OSError:
            pass


class _Pending:
    __slots__ = ("key", "method", "sent")

    def __init__(self, key: str, method: str, sent: dict[str, Any] | None) -> None:
        self.key = key
        self.method = method
        self.sent = sent  # the cached result the front answered with, if it did


class Tracker:
    """Pairs the static requests read with the real server's answers to them: drops the answers the front
    already gave, and writes the cache from the live ones."""

    def __init__(self, store: Store, base: str) -> None:
        self._store = store
        self._base = base
        self._pending: dict[Any, _Pending] = {}
        self._opened_with: Any = None  # the params of this session's `initialize`
        self._left = WATCHED_LINES
        self._answers_left = WATCHED_ANSWERS
        self._skip = 0  # lines the front already looked at, which the real server's reader reads again

    @property
    def watching(self) -> bool:
        """Whether input lines are still worth showing to `request`."""
        return self._left > 0

    @property
    def done(self) -> bool:
        """Nothing left to watch or to pair: the reader and the writer can drop the tracker."""
        return self._left <= 0 and not self._pending

    def key(self, method: str, params: Any) -> str:
        session = None if method == "initialize" else self._opened_with
        described = json.dumps([self._base, method, params, session], sort_keys=True)
        return hashlib.sha256(described.encode()).hexdigest()

    def request(self, line: str | bytes, serve: bool) -> str | None:
        """Looks at one input line; with `serve`, returns the cached answer to send for it, if any."""
        if not serve and self._skip:
            self._skip -= 1
            return None
        self._left -= 1
        if len(line) > LARGEST_LINE:
            return None
        try:
            message = json.loads(line)
        except ValueError:
            return None
        if not isinstance(message, dict) or "id" not in message:
            return None
        method, params = message.get("method"), message.get("params")
        if method == "initialize":
            self._opened_with = params
        if method not in STATIC or not isinstance(message["id"], (int, str)) or message["id"] in self._pending:
            return None
        key = self.key(method, params)
        cached = self._store.read(key) if serve else None
        self._pending[message["id"]] = _Pending(key, method, cached)
        if cached is None:
            return None
        answer = {"jsonrpc": "2.0", "id": message["id"], "result": cached}
        return json.dumps(answer, ensure_ascii=False, separators=(",", ":")) + "\n"

    def handed_off(self, lines_seen: int) -> None:
        self._skip = lines_seen

    def answer(self, text: str) -> bool:
        """Looks at one message of the real server's; False if it must not be sent (the front sent it)."""
        if not self._pending or ('"method"' in text[:200] and '"result"' not in text):
            return True
        self._answers_left -= 1
        if self._answers_left <= 0:  # an answer that never came (a request cancelled): stop looking
            self._pending.clear()
        try:
            message = json.loads(text)
        except ValueError:
            return True
        if not isinstance(message, dict) or "method" in message:
            return True
        pending = self._pending.pop(message.get("id"), None) if isinstance(message.get("id"), (int, str)) else None
        if pending is None:
            return True
        live = message.get("result")
        if pending.sent is None:
            if isinstance(live, dict):
                self._store.write(pending.key, pending.method, live)
            return True
        if live != pending.sent:
            import logging

            logging.getLogger("effectd").warning(
                "the start-up cache answered %s with what the server no longer answers; the client has the "
                "cached answer for this session, and the cache now holds the live one",
                pending.method,
            )
            if isinstance(live, dict):
                self._store.write(pending.key, pending.method, live)
            else:
                self._store.forget(pending.key)
        return False


class Front:
    """Reads stdin from spawn until the real server takes over, answering from the cache what it can."""

    def __init__(self, tracker: Tracker, fd_in: int = 0, fd_out: int = 1) -> None:
        self.tracker = tracker
        self._in, self._out = fd_in, fd_out
        self._read = bytearray()  # every byte read, for the real server to read again
        self._lines = 0
        self._wake_r, self._wake_w = os.pipe()
        self._writable = True
        self._thread = threading.Thread(target=self._run, name="effectd-startup-front", daemon=True)

    @classmethod
    def start(cls, argv: list[str]) -> Front | None:
        """The front of an `effectd serve` over stdio, running; None when opted out or it cannot run."""
        if os.environ.get(OPT_OUT, "") not in ("", "0") or "--http" in argv:
            return None
        try:
            front = cls(Tracker(Store(cache_dir()), base_key(argv)))
        except Exception as exc:  # no front is a slower start, never a failed one
            print(f"effectd: the start-up cache is off ({exc})", file=sys.stderr)
            return None
        front._thread.start()
        return front

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._in, select.POLLIN | select.POLLHUP)
        poller.register(self._wake_r, select.POLLIN)
        start = 0
        while True:
            events = dict(poller.poll())
            if self._wake_r in events:
                return
            try:
                chunk = os.read(self._in, 1 << 16)
            except OSError:
                return
            if not chunk:  # EOF: the real server finds it too
                return
            self._read += chunk
            while (end := self._read.find(b"\n", start)) >= 0:
                answer = self.tracker.request(bytes(self._read[start:end]), serve=self._writable)
                self._lines += 1
                start = end + 1
                if answer is not None:
                    self._write(answer.encode())

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._out, view)
            except OSError:  # the client is gone: the real server finds out by itself
                self._writable = False
                return
            view = view[written:]

    def handoff(self) -> bytes:
        """Stops the front (after the answer it may be writing) and returns every byte it read."""
        os.write(self._wake_w, b"x")
        self._thread.join()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.tracker.handed_off(self._lines)
        return bytes(self._read)
