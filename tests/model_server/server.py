"""The scripted model server: a loopback HTTP server in its own thread that CLIs use as their model API."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.model_server import dialects
from tests.model_server.script import Dynamic, Error, Script, Text, ToolCall, Turn

HOST = "127.0.0.1"
"""Loopback only: the server is never reachable from another machine."""


@dataclass
class Recorded:
    """One request as the CLI sent it, and what the script answered."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any
    match: str | None = None
    turn_index: int | None = None
    turn: Turn | None = None
    at: float = field(default_factory=time.monotonic)


_Position = Callable[[dict[str, Any]], tuple[str, int]]


class ModelServer:
    """Serves ``script`` on ``127.0.0.1:port`` (a free port by default) until :meth:`stop`.

    Use as a context manager: ``with ModelServer(script) as server: ... server.url``.
    """

    def __init__(self, script: Script, *, port: int = 0, model: str = "scripted-model") -> None:
        self.script = script
        self.model = model
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((HOST, port))
        self.port: int = self._socket.getsockname()[1]
        app = Starlette(
            routes=[
                Route("/v1/messages", self._anthropic, methods=["POST"]),
                Route("/v1/responses", self._responses, methods=["POST"]),
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1beta/models/{model_action:path}", self._gemini, methods=["POST"]),
                Route("/{path:path}", self._other, methods=["GET", "POST", "PUT", "DELETE", "HEAD"]),
            ]
        )
        config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def bound_address(self) -> tuple[str, int]:
        """The address the listening socket is bound to."""
        host, port = self._socket.getsockname()[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        """The base URL without a path, e.g. ``http://127.0.0.1:PORT``."""
        return f"http://{HOST}:{self.port}"

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> ModelServer:
        self._socket.listen(64)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the scripted model server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what was sent ---------------------------------------------------------------------------

    def recorded(self, path: str | None = None, match: str | None = None) -> list[Recorded]:
        """The requests so far (to ``path``, of the conversation ``match``), in arrival order."""
        with self._lock:
            found = list(self.requests)
        return [r for r in found if (path is None or r.path == path) and (match is None or r.match == match)]

    def turns_served(self, match: str) -> list[int]:
        return [r.turn_index for r in self.recorded(match=match) if r.turn_index is not None]

    # --- handlers --------------------------------------------------------------------------------

    async def _record(self, request: Request) -> Recorded:
        raw = await request.body()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        keep = (
            "content-type",
            "user-agent",
            "anthropic-version",
            "anthropic-beta",
            "x-api-key",
            "authorization",
            "x-goog-api-key",
        )
        headers = {k: v for k, v in request.headers.items() if k in keep}
        entry = Recorded(request.method, request.url.path, request.url.query, headers, body)
        with self._lock:
            self.requests.append(entry)
        return entry

    async def _choose(self, entry: Recorded, position: _Position) -> Text | ToolCall | Error:
        body = entry.body if isinstance(entry.body, dict) else {}
        opening, index = position(body)
        entry.match, entry.turn_index, turn = self.script.turn_for(opening, index)
        if isinstance(turn, Dynamic):
            turn = await turn.decide(body)
        entry.turn = turn
        return turn

    async def _anthropic(self, request: Request) -> Response:
        entry = await self._record(request)
        turn = await self._choose(entry, dialects.anthropic_position)
        if isinstance(turn, Error):
            return JSONResponse(dialects.anthropic_error(turn), status_code=turn.status)
        if isinstance(entry.body, dict) and entry.body.get("stream") is True:
            return _stream(dialects.anthropic_stream(turn, self.model))
        return JSONResponse(dialects.anthropic_message(turn, self.model))

    async def _responses(self, request: Request) -> Response:
        entry = await self._record(request)
        turn = await self._choose(entry, dialects.responses_position)
        if isinstance(turn, Error):
            return JSONResponse(dialects.openai_error(turn), status_code=turn.status)
        return _stream(dialects.responses_stream(turn, self.model))

    async def _chat(self, request: Request) -> Response:
        entry = await self._record(request)
        turn = await self._choose(entry, dialects.chat_position)
        if isinstance(turn, Error):
            return JSONResponse(dialects.openai_error(turn), status_code=turn.status)
        return _stream(dialects.chat_stream(turn, self.model))

    async def _gemini(self, request: Request) -> Response:
        """``{model}:streamGenerateContent`` (SSE with ``?alt=sse``) or ``{model}:generateContent``."""
        action = request.path_params["model_action"].rpartition(":")[2]
        if action not in ("streamGenerateContent", "generateContent"):
            return await self._other(request)
        entry = await self._record(request)
        turn = await self._choose(entry, dialects.gemini_position)
        if isinstance(turn, Error):
            return JSONResponse(dialects.gemini_error(turn), status_code=turn.status)
        if action == "streamGenerateContent":
            return _stream(dialects.gemini_stream(turn, self.model))
        return JSONResponse(dialects.gemini_message(turn, self.model))

    async def _other(self, request: Request) -> Response:
        await self._record(request)
        if request.url.path.endswith("/models"):
            return JSONResponse({"object": "list", "data": [{"id": self.model, "object": "model"}], "models": []})
        return JSONResponse(
            {"error": {"type": "not_found_error", "message": f"no {request.url.path}"}}, status_code=404
        )


def _stream(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers={"cache-control": "no-cache"})


def serving(script: Script) -> Iterator[ModelServer]:
    """A generator for pytest fixtures: the server, stopped afterwards."""
    with ModelServer(script) as server:
        yield server
