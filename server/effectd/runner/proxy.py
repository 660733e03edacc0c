"""The allow-list proxy of sandboxed effects: HTTP CONNECT and plain HTTP, only to the HOST:PORT allowed.

Each effect whose sandbox has `network: {"allow": [...]}` gets a unix socket in its private folder,
bound into its sandbox, where the relay inside (`effectd.runner.relay`) brings its connections. Here
every connection's first request decides: `CONNECT host:port` (HTTPS, or any TCP) or an absolute-URI
request (`GET http://host:port/path`, plain HTTP) to an allowed HOST:PORT is carried to it, the
plain request rewritten to origin form; anything else is answered 403 and closed. The bytes after that
are carried as they are, both ways, until either side ends.

Why hand-written: the proxies on PyPI are programs or frameworks with their own process model and
event loop (proxy.py, mitmproxy, pproxy), none an in-process CONNECT proxy that takes an allow-list per
listener; this is about 150 lines on anyio. It runs on an event loop of its own, in one daemon thread
(`Proxies`), so a busy transfer never delays the server's own loop, and the runner, which starts
effects from its spawner threads, opens and closes listeners there with blocking calls.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from concurrent.futures import Future
from contextlib import suppress
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.abc
from anyio.from_thread import BlockingPortal

log = logging.getLogger("effectd")

MAX_HEAD_BYTES = 64 * 1024
HEAD_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 30.0
_DROPPED_HEADERS = (b"proxy-connection", b"proxy-authorization", b"connection", b"keep-alive")


class Proxies:
    """The proxy's event loop (started with the first listener) and the listeners of running effects."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._portal: BlockingPortal | None = None
        self._stopped: Future[None] | None = None

    def _running(self) -> BlockingPortal:
        with self._lock:
            if self._portal is None:
                ready: Future[BlockingPortal] = Future()
                self._stopped = Future()
                thread = threading.Thread(target=self._loop, args=(ready,), name="effectd-proxy", daemon=True)
                thread.start()
                self._portal = ready.result()
            return self._portal

    def _loop(self, ready: Future[BlockingPortal]) -> None:
        async def main() -> None:
            async with BlockingPortal() as portal:
                ready.set_result(portal)
                await portal.sleep_until_stopped()

        try:
            anyio.run(main)
        finally:
            assert self._stopped is not None
            self._stopped.set_result(None)

    def open(self, path: str, allow: Collection[str]) -> Listening:
        """Listens on unix socket `path` for one effect, letting through only `allow` (HOST:PORT)."""
        portal = self._running()
        listener = portal.call(anyio.create_unix_listener, path)
        allowed = frozenset(entry.lower() for entry in allow)
        served = portal.start_task_soon(listener.serve, partial(_handle, allowed))
        return Listening(portal, listener, served)

    def stop(self) -> None:
        """Stops the loop (every effect is over by then)."""
        with self._lock:
            portal, self._portal = self._portal, None
        if portal is not None:
            with suppress(RuntimeError):
                portal.call(portal.stop, True)


class Listening:
    """One effect's listener; `close` stops it and the connections it carries."""

    def __init__(self, portal: BlockingPortal, listener: anyio.abc.Listener[Any], served: Future[None]) -> None:
        self._portal, self._listener, self._served = portal, listener, served

    def close(self) -> None:
        self._served.cancel()
        with suppress(Exception):
            self._portal.call(self._listener.aclose)


async def _handle(allowed: frozenset[str], client: anyio.abc.ByteStream) -> None:
    async with client:
        try:
            with anyio.fail_after(HEAD_TIMEOUT_S):
                head, rest = await _read_head(client)
            method, target, version = head.split(b"\r\n", 1)[0].split(b" ", 2)
        except (TimeoutError, ValueError, anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            return
        connect = method.upper() == b"CONNECT"
        if connect:
            address = target.decode("latin-1")
            host, _, port_text = address.rpartition(":")
            path = b""
        else:
            parts = urlsplit(target.decode("latin-1"))
            if parts.scheme != "http" or not parts.hostname:
                await _refuse(client, 400, "a proxy request names an absolute http:// URL, or is a CONNECT")
                return
            host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
            port_text = str(parts.port or 80)
            path = (parts.path or "/").encode("latin-1") + (
                b"?" + parts.query.encode("latin-1") if parts.query else b""
            )
        address = f"{host}:{port_text}".lower()
        if address not in allowed:
            await _refuse(
                client,
                403,
                f"{address} is not in this sandbox's network allow-list ({', '.join(sorted(allowed)) or 'empty'})",
            )
            return
        try:
            with anyio.fail_after(CONNECT_TIMEOUT_S):
                upstream = await anyio.connect_tcp(host.strip("[]"), int(port_text))
        except (OSError, TimeoutError, ValueError) as exc:
            await _refuse(client, 502, f"cannot reach {address}: {exc}")
            return
        async with upstream:
            if connect:
                await client.send(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                first = rest
            else:
                first = _origin_form(head, method, path, version) + rest
            if first:
                await upstream.send(first)
            async with anyio.create_task_group() as tg:
                tg.start_soon(_carry, client, upstream)
                tg.start_soon(_carry, upstream, client)


async def _read_head(client: anyio.abc.ByteStream) -> tuple[bytes, bytes]:
    """The request head (through the blank line) and the bytes read after it."""
    data = b""
    while (end := data.find(b"\r\n\r\n")) < 0:
        if len(data) > MAX_HEAD_BYTES:
            raise ValueError("request head too large")
        data += await client.receive()
    return data[: end + 4], data[end + 4 :]


def _origin_form(head: bytes, method: bytes, path: bytes, version: bytes) -> bytes:
    """The request as the origin server takes it: its path, without the proxy's hop-by-hop headers, and
    `Connection: close` (one request per connection: each is checked against the allow-list)."""
    lines = head.split(b"\r\n")[1:-2]
    kept = [line for line in lines if line.split(b":", 1)[0].strip().lower() not in _DROPPED_HEADERS]
    return b"\r\n".join([method + b" " + path + b" " + version, *kept, b"Connection: close", b"", b""])


async def _refuse(client: anyio.abc.ByteStream, status: int, why: str) -> None:
    reason = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}[status]
    body = f"effectd sandbox: {why}\n".encode()
    answer = f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
    with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        await client.send(answer.encode() + b"Connection: close\r\n\r\n" + body)


async def _carry(source: anyio.abc.ByteStream, target: anyio.abc.ByteStream) -> None:
    """Copies `source` to `target` until `source` ends, then ends `target`'s sending side."""
    try:
        async for chunk in source:
            await target.send(chunk)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass
    finally:
        with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            await target.send_eof()
