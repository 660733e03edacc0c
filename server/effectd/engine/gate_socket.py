"""The Unix socket by which the approval gates of this server's sub-agents reach it (issue 25).

Each gate (`effectd.protocol.gate`) connects, sends one JSON line (`effect_id`, `token`, `tool`, `input`)
and reads one JSON line back, the answer in Claude Code's permission-prompt form. The socket is in a
private 0700 folder, opened at the first effect that asks and removed when the server stops; a request
whose token is not the one made for its effect is denied before anyone sees it.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ByteStream, SocketListener, TaskGroup

log = logging.getLogger("effectd")

MAX_REQUEST = 4 << 20  # a tool input (a file to write) can be large


class GateSocket:
    """Serves the gates: each request with a valid token is answered by `on_request`."""

    def __init__(self, on_request: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]) -> None:
        self._on_request = on_request
        self._tokens: dict[str, str] = {}  # effect_id -> the token its gate presents
        self._folder: Path | None = None  # holds the socket (a path short enough for AF_UNIX)
        self._listener: SocketListener | None = None
        self._tg: TaskGroup | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        finally:
            if self._listener is not None:  # its serving task is gone; the socket is closed here, not by the GC
                with anyio.CancelScope(shield=True):
                    await self._listener.aclose()
            if self._folder is not None:
                shutil.rmtree(self._folder, ignore_errors=True)

    def token(self, effect_id: str) -> str:
        """The token the effect's gate presents (made at its first use)."""
        return self._tokens.setdefault(effect_id, secrets.token_hex(16))

    async def path(self) -> str:
        """The socket's path; it listens from the first call on."""
        if self._folder is None:
            assert self._tg is not None, "GateSocket.running() is not entered"
            folder = Path(tempfile.mkdtemp(prefix="effectd-gate-"))  # 0700: only this user reaches the socket
            self._listener = listener = await anyio.create_unix_listener(folder / "s")
            self._folder = folder
            self._tg.start_soon(listener.serve, self._serve_one)
        return str(self._folder / "s")

    async def _serve_one(self, stream: ByteStream) -> None:
        async with stream:
            buffer = b""
            try:
                while not buffer.endswith(b"\n") and len(buffer) < MAX_REQUEST:
                    buffer += await stream.receive()
                request = json.loads(buffer)
                reply = await self._answer(request)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
            except Exception as exc:
                log.warning("approvals: a request the gate sent could not be read: %s", exc)
                reply = {"behavior": "deny", "message": f"effectd could not read the request: {exc}"}
            with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await stream.send(json.dumps(reply).encode() + b"\n")

    async def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        expected = self._tokens.get(str(request.get("effect_id", "")))
        if expected is None or not hmac.compare_digest(expected, str(request.get("token", ""))):
            return {"behavior": "deny", "message": "effectd does not know this gate (a wrong effect or token)"}
        return await self._on_request(request)
