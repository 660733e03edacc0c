"""The engine: journal + supervisor + settings, opened together and closed in order.

It is independent of MCP: the tools, the command line and the Python API all drive an `Engine`.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from effectd.config import Settings
from effectd.errors import DatabaseBusyError, EffectdError
from effectd.flows import FlowManager
from effectd.journal import Journal
from effectd.supervisor import Supervisor

log = logging.getLogger("effectd")


def lock_path(db: Path) -> Path:
    return db.with_name(db.name + ".lock")


def owner_pid(db: Path) -> int | None:
    """The pid of the live server that owns `db`, or None when no server holds it."""
    path = lock_path(db)
    if not path.exists():
        return None
    with open(path, "a+") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            text = file.read().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(file, fcntl.LOCK_UN)
        return None


@asynccontextmanager
async def owning(db: Path) -> AsyncIterator[None]:
    """Holds the database's lock file for as long as the server runs: one live server per journal."""
    db.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path(db), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise DatabaseBusyError(
                f"another effectd server (pid {other or '?'}) already owns {db}; stop it, or give this one "
                "its own database with --db"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


@dataclass
class Engine:
    settings: Settings
    journal: Journal
    supervisor: Supervisor
    flows: FlowManager = field(init=False, repr=False)

    @classmethod
    @asynccontextmanager
    async def open(cls, settings: Settings) -> AsyncIterator[Engine]:
        """Owns the database, recovers it, runs effects; on exit stops them (reason `shutdown`)."""
        async with owning(settings.db), Journal.open(settings.db) as journal:
            supervisor = Supervisor(
                journal,
                output_dir=settings.output_dir,
                max_concurrency=settings.max_concurrency,
                default_grace_s=settings.default_grace_s,
                output_limit_bytes=settings.output_limit_bytes,
                stall_after_s=settings.stall_after_s,
                result_grace_s=settings.result_grace_s,
                harness_limits={
                    name: profile.max_concurrency
                    for name, profile in settings.harnesses.items()
                    if profile.max_concurrency is not None
                },
                keep_queued=settings.keep_queued,
            )
            engine = cls(settings, journal, supervisor)
            engine.flows = FlowManager(settings, journal, supervisor)
            await engine.flows.load()
            async with supervisor.running(), anyio.create_task_group() as tg:
                await engine.flows.recover()
                tg.start_soon(engine._answer_control_requests)
                try:
                    yield engine
                finally:
                    engine.flows.closing = True
                    tg.cancel_scope.cancel()

    async def stop_effects(self) -> None:
        """Cancels the effects (reason `shutdown`, each within its grace) as the engine's close would,
        but while the transport still serves, so a call waiting on an effect returns its record
        instead of being cut (and its effect marked `client_cancelled`). Closing later finds nothing left."""
        self.flows.closing = True
        await self.supervisor.shutdown()

    async def _answer_control_requests(self) -> None:
        """Serves `effectd cancel` from other processes: they write a request row, the server acts on it."""
        while True:
            await anyio.sleep(self.settings.poll_control_s)
            try:
                requests = await self.journal.open_requests()
            except Exception:  # a busy database: try again on the next tick
                log.exception("reading control requests failed")
                continue
            for request in requests:
                try:
                    await self._answer(request)
                except Exception:  # one bad request must not stop the server
                    log.exception("answering control request %s failed", request.get("id"))

    async def _answer(self, request: dict[str, object]) -> None:
        request_id = int(str(request["id"]))
        try:
            effect = await self.supervisor.get(str(request["effect_id"]))
        except EffectdError:
            await self.journal.answer_request(request_id, "unknown")
            return
        reason = request["reason"]
        self.supervisor.request_cancel(effect, "user", str(reason) if reason is not None else None)

        # Answered at once; the command then follows the effect in the journal until it is terminal.
        await self.journal.answer_request(request_id, "accepted")
