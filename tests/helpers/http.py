"""HTTP: an in-process server on a free port, the official MCP client over streamable HTTP, and a real
``effectd serve --http`` daemon (the ``daemon_factory`` fixture in tests/e2e/conftest.py starts it)."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from effectd.app import build_server
from effectd.config.http import HttpListen
from effectd.engine.core import Engine
from effectd.http.security import open_listener
from effectd.http.serve import serve_http

TOKEN = "s3cret-token-for-tests"


# Waits for a file to exist (bounded), then prints; lets a test decide when an effect ends.
WAIT_FOR_FILE = (
    "import os, sys, time\n"
    "print('started', flush=True)\n"
    "deadline = time.monotonic() + 60\n"
    "while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:\n"
    "    time.sleep(0.02)\n"
    "print('released', flush=True)\n"
)


@asynccontextmanager
async def serving(engine: Engine, *, token: str | None = None) -> AsyncIterator[str]:
    """Serves `engine` over HTTP on a free loopback port in this event loop; yields the base URL."""
    sock = open_listener("127.0.0.1", 0, token)
    port = sock.getsockname()[1]
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            partial(serve_http, build_server(engine), engine, HttpListen(host="127.0.0.1", token=token), sock=sock)
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            tg.cancel_scope.cancel()


@asynccontextmanager
async def http_client(url: str, token: str | None = None, mode: str = "auto") -> AsyncIterator[Client]:
    """The official MCP client over streamable HTTP, with the bearer token as a header when given.
    `mode="legacy"` speaks the 2025 protocol (initialize handshake, a session, a standing GET stream)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as http:
        transport = streamable_http_client(f"{url}/mcp", http_client=http)
        async with Client(transport, read_timeout_seconds=70, mode=mode) as client:
            yield client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    url: str
    db: Path
    log: Path

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


def wait_for_url(proc: subprocess.Popen[bytes], log: Path, within_s: float = 30) -> str:
    """The base URL a server started with ``--port 0`` says it serves at (the port is the OS's choice, so
    parallel test workers never race for one); fails if the server exits first or says nothing in time."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        said = log.read_text(errors="replace")
        found = re.search(r"serving MCP at (http://\S+)/mcp", said)
        if found is not None:
            return found.group(1)
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode}: {said}")
        time.sleep(0.05)
    raise AssertionError(f"the server named no URL within {within_s} s: {log.read_text(errors='replace')}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stops a server this test started, by its pid: SIGTERM, then SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def sse_events(response: httpx2.Response) -> AsyncIterator[tuple[str, Any]]:
    """(event name, data) of a server-sent event stream; keep-alive comments are skipped."""
    name, data = "message", ""
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
        elif not line and data:
            yield name, json.loads(data)
            name, data = "message", ""
