"""`effectd cancel`: asks the live server that runs an effect to cancel it, and waits for its end.

The request goes through the journal's `control` table, which the server polls; with no live server,
a waiting effect is cancelled by the engine itself (`effectd.engine.core.cancel_offline`). The command
never appends to the journal.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from effectd.cli.common import TERMINAL, complain, print_json, record_of, settings_of
from effectd.config.settings import Settings
from effectd.errors import EffectdError
from effectd.journal.reader import JournalReader

POLL_S = 0.05
# How long to follow an effect the server is stopping: its grace, at most 600 s, and some slack.
FOLLOW_S = 660.0


def cmd_cancel(args: argparse.Namespace) -> int:
    from effectd.peers.ownership import runner_alive

    settings = settings_of(args)
    db = settings.db
    reader = JournalReader(db)
    row = reader.effect(args.effect_id)
    if row is None or (args.run and row["run_id"] != args.run):
        where = f" in run {args.run}" if args.run else ""
        complain(f"unknown effect {args.effect_id}{where} (database {db})")
        return 1
    if row["status"] in TERMINAL:
        print_json(record_of(settings, args.effect_id))
        return 0
    if not runner_alive(row.get("owner"), reader.servers(), db):
        return _cancel_without_server(settings, args.effect_id, args.reason)
    request_id = reader.request_control(args.effect_id, "cancel", args.reason, window_s=args.wait)
    answer = wait_for_answer(reader, request_id, args.wait, f"asked the server to cancel {args.effect_id}, waiting...")
    if answer is None:
        complain(f"no live server answered within {args.wait:g} s; the request expired and will not be carried out")
        return 2
    if answer == "unknown":
        complain(f"the server does not know effect {args.effect_id}")
        return 1
    record = _follow_until_terminal(settings, args.effect_id)
    print_json(record)
    return 0 if record and record["status"] in TERMINAL else 2


def wait_for_answer(reader: JournalReader, request_id: int, window_s: float, waiting: str) -> str | None:
    """The live server's answer to a control request within `window_s`, else None: the request is then
    withdrawn (expired), so no server carries it out later, even if this command is interrupted."""
    deadline = time.monotonic() + window_s
    shown = False
    answer: str | None = None
    try:
        while answer is None and time.monotonic() < deadline:
            answer = reader.control_answer(request_id)
            if answer is None:
                if not shown and sys.stderr.isatty():
                    complain(waiting)
                    shown = True
                time.sleep(POLL_S)
    finally:
        if answer is None:  # also when interrupted: a request nobody waits for must never be carried out
            answer = reader.expire_request(request_id)  # None: withdrawn; else the answer a server gave first
    return None if answer == "expired" else answer


def _follow_until_terminal(settings: Settings, effect_id: str, within_s: float = FOLLOW_S) -> dict[str, Any] | None:
    """The effect's record once it is terminal (the server is killing it: up to its grace), polled."""
    deadline = time.monotonic() + within_s
    record = record_of(settings, effect_id)
    while record is not None and record["status"] not in TERMINAL and time.monotonic() < deadline:
        time.sleep(POLL_S)
        record = record_of(settings, effect_id)
    return record


def _cancel_without_server(settings: Settings, effect_id: str, reason: str | None) -> int:
    """No server owns the database: the engine cancels a pending or queued effect in the journal itself."""
    import anyio

    from effectd.engine.core import cancel_offline

    try:
        cancelled = anyio.run(cancel_offline, settings.db, effect_id, reason, settings.worktree_dir)
    except EffectdError as exc:  # a server took the journal meanwhile (DatabaseBusyError)
        complain(str(exc))
        return 2
    complain("no live server owns the database")
    if cancelled:
        complain(f"{effect_id} was waiting, cancelled in the journal directly")
    print_json(record_of(settings, effect_id))
    return 2
