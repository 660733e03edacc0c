"""Strangers cannot starve `effectd serve --http`: half-open connections are closed after the header
timeout, open connections are bounded (a prompt client is still served), repeated errors do not flood
the log, and the token can come from a file so it never shows in the process's command line."""

from __future__ import annotations

import io
import logging
import os
import resource
import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from effectd.support.log_repeats import RepeatFilter
from tests.helpers.http import free_port, http_client, stop, wait_for_url
from tests.helpers.mcp import call
from tests.helpers.processes import effectd_bin, py

pytestmark = pytest.mark.anyio

TOKEN = "file-held-token-4c1f"
PARTIAL = b"GET /api/effects HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "  # never finished


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Any]:
    started: list[subprocess.Popen[bytes]] = []

    def start(*flags: str, config: str = "", nofile: int | None = None) -> tuple[subprocess.Popen[bytes], str, Path]:
        log = tmp_path / f"server{len(started)}.stderr"
        (tmp_path / "effectd.toml").write_text(config)
        env = {k: v for k, v in os.environ.items() if k != "EFFECTD_TOKEN"}

        def limit_files() -> None:  # as on a machine with a low open-files limit: the bound must hold below it
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with open(log, "wb") as err:
            proc = subprocess.Popen(
                [effectd_bin(), "serve", "--http", "--port", "0", "--db", str(tmp_path / "j.db"), *flags],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=tmp_path,
                env={**env, "EFFECTD_CONFIG": str(tmp_path / "effectd.toml")},
                preexec_fn=limit_files,  # noqa: PLW1509 - only setrlimit, in the child
            )
        started.append(proc)
        return proc, wait_for_url(proc, log), log

    yield start
    for proc in started:
        stop(proc)


def command_line(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as file:
        return file.read()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the server has closed the connection (EOF or reset), without waiting."""
    ready, _, _ = select.select([sock], [], [], 0)
    if not ready:
        return False
    try:
        return sock.recv(4096) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.mark.slow
async def test_half_open_connections_are_bounded_and_closed_and_authorized_clients_are_still_served(
    servers: Any, tmp_path: Path
) -> None:
    bound, timeout_s = 64, 2.0
    proc, url, log = servers(
        "--token-file",
        str(token_file(tmp_path)),
        "--allow-any-command",
        config=f"[http]\nmax_connections = {bound}\nheader_timeout_s = {timeout_s}\n",
        nofile=256,  # 400 held connections would run the server out of file descriptors
    )
    strangers: list[socket.socket] = []
    trickling: list[socket.socket] = []
    stop_trickle = threading.Event()

    def trickle() -> None:  # slow-loris: one header byte every 0.2 s, for ever
        while not stop_trickle.wait(0.2):
            for sock in trickling:
                try:
                    sock.send(b"X")
                except OSError:
                    pass

    trickler = threading.Thread(target=trickle, daemon=True)
    try:
        for _ in range(400):
            sock = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5)
            sock.sendall(PARTIAL)
            strangers.append(sock)
        attacked_at = time.monotonic()
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5)
            sock.sendall(PARTIAL + b"x-slow: ")
            trickling.append(sock)
        trickler.start()

        # Authorized clients are answered while 400 strangers keep trying.
        async with httpx2.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            for _ in range(5):
                answer = await http.get(f"{url}/api/effects")
                assert answer.status_code == 200, answer.text
        async with http_client(url, TOKEN) as client:
            record = await call(client, "dispatch_effect", command=py("print('served')"))
        assert record["status"] == "succeeded" and "served" in record["output_tail"]
        assert proc.poll() is None
        assert open_fds(proc.pid) <= bound + 60, "the server holds more connections than its bound"

        # Every stranger is closed once the header timeout has passed (the evicted ones sooner),
        # the slow-loris ones too: trickling bytes does not push the deadline back.
        deadline = attacked_at + timeout_s + 15
        still_open = [*strangers, *trickling]
        while still_open and time.monotonic() < deadline:
            still_open = [s for s in still_open if not closed_by_peer(s)]
            await anyio.sleep(0.05)
        assert not still_open, f"{len(still_open)} half-open connections were never closed"
        assert time.monotonic() - attacked_at >= timeout_s - 0.5 or not trickling
    finally:
        stop_trickle.set()
        for sock in [*strangers, *trickling]:
            sock.close()
    # Still serving afterwards, and the log did not flood (the bound was hit hundreds of times).
    async with httpx2.AsyncClient(timeout=10, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        assert (await http.get(f"{url}/api/effects")).status_code == 200
    text = log.read_text(errors="replace")
    assert len(text) < 8_000 and text.count("\n") < 40, text[-3000:]
    assert "Traceback" not in text, text[-3000:]


async def test_the_token_from_a_file_works_and_is_not_in_the_command_line(servers: Any, tmp_path: Path) -> None:
    path = token_file(tmp_path)
    proc, url, _ = servers("--token-file", str(path), "--allow-any-command")
    cmdline = command_line(proc.pid)
    assert str(path).encode() in cmdline and TOKEN.encode() not in cmdline
    async with httpx2.AsyncClient(timeout=10) as http:
        assert (await http.get(f"{url}/api/effects")).status_code == 401
        wrong = await http.get(f"{url}/api/effects", headers={"Authorization": f"Bearer {TOKEN}x"})
        assert wrong.status_code == 401
        ok = await http.get(f"{url}/api/effects", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
    async with http_client(url, TOKEN) as client:
        assert (await call(client, "dispatch_effect", command=py("pass")))["status"] == "succeeded"


async def test_the_token_file_can_be_configured(servers: Any, tmp_path: Path) -> None:
    path = token_file(tmp_path)
    proc, url, _ = servers(config=f'[http]\ntoken_file = "{path}"\n')
    assert TOKEN.encode() not in command_line(proc.pid)
    async with httpx2.AsyncClient(timeout=10) as http:
        assert (await http.get(f"{url}/api/effects")).status_code == 401
        assert (await http.get(f"{url}/api/effects", headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 200


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--token-file", "missing-token"], "cannot read the token file missing-token"),
        (["--token-file", "empty-token"], "token file empty-token is empty"),
        (["--token", "x", "--token-file", "empty-token"], "--token or --token-file, not both"),
    ],
)
def test_a_token_file_that_cannot_be_used_is_refused_with_exit_2(tmp_path: Path, flags: list[str], expected: str):
    (tmp_path / "empty-token").write_text("\n")
    done = subprocess.run(
        [effectd_bin(), "serve", "--http", "--port", str(free_port()), "--db", str(tmp_path / "j.db"), *flags],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "j.db").exists()


def test_identical_errors_are_logged_once_a_second_with_a_count() -> None:
    now = [0.0]
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RepeatFilter(1.0, clock=lambda: now[0]))
    logger = logging.getLogger("effectd.test-repeats")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for i in range(20_000):  # 20,000 identical failures over 2 s
            now[0] = i / 10_000
            try:
                raise OSError(24, "Too many open files")
            except OSError:
                logger.exception("accepting connection %d failed", i)
        logger.warning("something else")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert text.count("Traceback") == 1, text
    assert text.count("accepting connection") == 2, text  # the first, then one a second later with the count
    assert "(9999 more like this in the last 1.0 s)" in text
    assert "something else" in text
    assert len(text) < 2_000


async def test_the_header_timeout_and_the_bound_are_parameters_of_serve_http(engine) -> None:
    from functools import partial

    from effectd.app import build_server
    from effectd.config.http import HttpListen
    from effectd.http.security import open_listener
    from effectd.http.serve import serve_http

    sock = open_listener("127.0.0.1", 0, None)
    port = sock.getsockname()[1]
    serve = partial(
        serve_http, build_server(engine), engine, HttpListen(max_connections=8, header_timeout_s=0.5), sock=sock
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        strangers = []
        for _ in range(20):  # more than the bound: the oldest waiting ones make room
            stream = await anyio.connect_tcp("127.0.0.1", port)
            await stream.send(PARTIAL)
            strangers.append(stream)
        async with httpx2.AsyncClient(timeout=10) as http:
            answer = await http.get(f"http://127.0.0.1:{port}/api/effects")
        assert answer.status_code == 200
        with anyio.fail_after(10):
            for stream in strangers:  # each is closed by the server: EOF or a reset
                try:
                    while await stream.receive():
                        pass
                except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                    pass
                await stream.aclose()
        tg.cancel_scope.cancel()
