"""The `effectd` command: serve, cancel, ls, show, logs, journal, demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from effectd.errors import EffectdError

TERMINAL = ("succeeded", "failed", "cancelled", "skipped")


def _db_path(value: str | None) -> Path:
    if value:
        return Path(value).expanduser().absolute()
    if os.environ.get("EFFECTD_DB"):
        return Path(os.environ["EFFECTD_DB"]).expanduser().absolute()
    return Path(".effectd/journal.db").absolute()


def _read(db: Path, sql: str, *params: Any) -> list[sqlite3.Row]:
    if not db.exists():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(sql, params).fetchall()


def _record(db: Path, effect_id: str) -> dict[str, Any] | None:
    from effectd.output import OutputLog
    from effectd.supervisor import Effect

    rows = _read(db, "SELECT * FROM effects WHERE effect_id = ?", effect_id)
    if not rows:
        return None
    output_dir = db.parent / f"{db.stem}.output"
    effect = Effect.from_row(dict(rows[0]), OutputLog.existing(output_dir / f"{effect_id}.log", 1 << 62))
    return effect.record().model_dump(mode="json")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


# --- serve ---------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    import anyio

    from effectd.app import serve
    from effectd.config import build_settings, load_file

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="effectd: %(levelname)s %(message)s")
    try:
        settings = build_settings(
            load_file(Path(args.config) if args.config else None),
            db=Path(args.db) if args.db else None,
            max_concurrency=args.max_concurrency,
            allow_commands=args.allow_command or (),
            allow_any_command=args.allow_any_command,
            keep_queued=args.keep_queued,
        )
        http: dict[str, Any] = {}
        if args.http:
            http = {"host": args.host, "port": args.port, "token": args.token or os.environ.get("EFFECTD_TOKEN")}
        anyio.run(lambda: serve(settings, "http" if args.http else "stdio", **http))
    except BaseException as exc:  # errors raised in the server's task group arrive grouped
        refusals = _effectd_errors(exc)
        if refusals:
            for refusal in refusals:
                print(f"effectd: {refusal}", file=sys.stderr)
            return 2
        if isinstance(exc, KeyboardInterrupt):
            return 130
        raise
    return 0


def _effectd_errors(exc: BaseException) -> list[EffectdError]:
    if isinstance(exc, EffectdError):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        return [e for inner in exc.exceptions for e in _effectd_errors(inner)]
    return []


# --- cancel --------------------------------------------------------------------------------------


def cmd_cancel(args: argparse.Namespace) -> int:
    from effectd.models import now_iso
    from effectd.ownership import owner_pid

    db = _db_path(args.db)
    rows = _read(db, "SELECT run_id, status FROM effects WHERE effect_id = ?", args.effect_id)
    if not rows or (args.run and rows[0]["run_id"] != args.run):
        where = f" in run {args.run}" if args.run else ""
        print(f"effectd: unknown effect {args.effect_id}{where} (database {db})", file=sys.stderr)
        return 1
    if rows[0]["status"] in TERMINAL:
        _print_json(_record(db, args.effect_id))
        return 0
    if owner_pid(db) is None:
        return _cancel_without_server(db, args.effect_id, args.reason)
    with sqlite3.connect(db, timeout=10) as conn:
        request_id = conn.execute(
            "INSERT INTO control (effect_id, action, reason, requested_at) VALUES (?, 'cancel', ?, ?)",
            (args.effect_id, args.reason, now_iso()),
        ).lastrowid
    deadline = time.monotonic() + args.wait
    shown = False
    while time.monotonic() < deadline:
        answer = _read(db, "SELECT answer FROM control WHERE id = ?", request_id)
        if answer and answer[0]["answer"] is not None:
            if answer[0]["answer"] == "unknown":
                print(f"effectd: the server does not know effect {args.effect_id}", file=sys.stderr)
                return 1
            record = _follow_until_terminal(db, args.effect_id)
            _print_json(record)
            return 0 if record and record["status"] in TERMINAL else 2
        if not shown and sys.stderr.isatty():
            print(f"effectd: asked the server to cancel {args.effect_id}, waiting...", file=sys.stderr)
            shown = True
        time.sleep(0.05)
    print(f"effectd: no live server answered within {args.wait:g} s", file=sys.stderr)
    return 2


def _follow_until_terminal(db: Path, effect_id: str, within_s: float = 660.0) -> dict[str, Any] | None:
    """The effect's record once it is terminal (the server is killing it: up to its grace), polled."""
    deadline = time.monotonic() + within_s
    record = _record(db, effect_id)
    while record is not None and record["status"] not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.05)
        record = _record(db, effect_id)
    return record


def _cancel_without_server(db: Path, effect_id: str, reason: str | None) -> int:
    """No server owns the database: a pending or queued effect is cancelled in the journal directly."""
    import anyio

    from effectd.journal import Journal, terminal_event
    from effectd.models import now_iso
    from effectd.ownership import owning

    async def write() -> bool:
        async with Journal.open(db) as journal:
            row = await journal.effect(effect_id)
            if row is None or row["status"] not in ("pending", "queued"):
                return False
            event = terminal_event("cancelled", row["run_id"], effect_id, now_iso(), cancel_message=reason)
            await journal.append(event)
            return True

    async def guarded() -> bool:
        async with owning(db):
            return await write()

    try:
        cancelled = anyio.run(guarded)
    except EffectdError as exc:
        print(f"effectd: {exc}", file=sys.stderr)
        return 2
    print("effectd: no live server owns the database", file=sys.stderr)
    if cancelled:
        print(f"effectd: {effect_id} was waiting, cancelled in the journal directly", file=sys.stderr)
    _print_json(_record(db, effect_id))
    return 2


# --- reading the database ------------------------------------------------------------------------


def cmd_ls(args: argparse.Namespace) -> int:
    db = _db_path(args.db)
    where, params = [], []
    for column, value in (("run_id", args.run), ("group_name", args.group), ("status", args.status)):
        if value:
            where.append(f"{column} = ?")
            params.append(value)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = _read(db, f"SELECT * FROM effects {clause} ORDER BY effect_id DESC LIMIT ?", *params, args.limit)
    if args.json:
        _print_json([_record(db, row["effect_id"]) for row in rows])
        return 0
    if not rows:
        print(f"no effects in {db}")
        return 0
    from effectd.models import seconds_between

    header = f"{'EFFECT':<30} {'STATUS':<10} {'EXIT':>4} {'SECONDS':>8}  {'GROUP':<16} WHAT"
    print(header)
    for row in rows:
        what = row["label"] or (row["harness"] and f"[{row['harness']}]") or " ".join(json.loads(row["command"]))
        seconds = seconds_between(row["started_at"], row["finished_at"])
        print(
            f"{row['effect_id']:<30} {row['status']:<10} {'' if row['exit_code'] is None else row['exit_code']:>4} "
            f"{'' if seconds is None else f'{seconds:.2f}':>8}  {(row['group_name'] or '')[:16]:<16} {what[:60]}"
        )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    db = _db_path(args.db)
    record = _record(db, args.id)
    if record is None:
        flows = _read(db, "SELECT * FROM flows WHERE flow_id = ?", args.id)
        if flows:
            _print_json({**dict(flows[0]), "steps": json.loads(flows[0]["steps"])})
            return 0
        print(f"effectd: unknown id {args.id} (database {db})", file=sys.stderr)
        return 1
    _print_json(record)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    db = _db_path(args.db)
    if not _read(db, "SELECT 1 FROM effects WHERE effect_id = ?", args.id):
        print(f"effectd: unknown effect {args.id} (database {db})", file=sys.stderr)
        return 1
    path = db.parent / f"{db.stem}.output" / f"{args.id}.log"
    offset = 0
    out = sys.stdout.buffer
    while True:
        status = _read(db, "SELECT status FROM effects WHERE effect_id = ?", args.id)[0]["status"]
        if path.exists():
            with open(path, "rb") as file:
                file.seek(offset)
                data = file.read()
            if data:
                out.write(data)
                out.flush()
                offset += len(data)
        if not args.follow or status in TERMINAL:
            return 0
        time.sleep(0.2)


def cmd_journal(args: argparse.Namespace) -> int:
    db = _db_path(args.db)
    after = 0
    while True:
        if args.run:
            rows = _read(db, "SELECT * FROM events WHERE run_id = ? AND seq > ? ORDER BY seq", args.run, after)
        else:
            rows = _read(db, "SELECT * FROM events WHERE seq > ? ORDER BY seq", after)
        for row in rows:
            after = row["seq"]
            if args.json:
                print(json.dumps({**dict(row), "data": json.loads(row["data"])}), flush=True)
            else:
                subject = row["effect_id"] or row["run_id"] or ""
                print(f"{row['seq']:>6} {row['ts']} {row['type']:<24} {subject} {row['data'][:120]}", flush=True)
        if not args.follow:
            return 0
        time.sleep(0.2)


def cmd_demo(args: argparse.Namespace) -> int:
    from effectd.demo import main as demo_main

    return int(demo_main(fast=args.fast))


# --- parsing -------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="effectd", description="Run effects for agents, supervised and journaled.")
    sub = top.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the MCP server (stdio by default)")
    serve.add_argument("--db", help="journal database (default $EFFECTD_DB, else ./.effectd/journal.db)")
    serve.add_argument("--config", help="TOML configuration (default $EFFECTD_CONFIG, else ./effectd.toml)")
    serve.add_argument("--max-concurrency", type=int, help="effects running at once (default 16)")
    serve.add_argument("--allow-command", action="append", metavar="PROG", help="a program command effects may run")
    serve.add_argument("--allow-any-command", action="store_true", help="let command effects run any program")
    serve.add_argument("--keep-queued", action="store_true", help="on stop, keep waiting effects for the next start")
    serve.add_argument("--http", action="store_true", help="serve streamable HTTP at /mcp instead of stdio")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--token", help="bearer token HTTP clients must send (default $EFFECTD_TOKEN)")
    serve.set_defaults(func=cmd_serve)

    cancel = sub.add_parser("cancel", help="cancel an effect of the live server")
    cancel.add_argument("effect_id")
    cancel.add_argument("--run", help="the effect's run (checked)")
    cancel.add_argument("--reason", help="kept as the effect's cancel_message")
    cancel.add_argument("--db")
    cancel.add_argument("--wait", type=float, default=10.0, help=argparse.SUPPRESS)
    cancel.set_defaults(func=cmd_cancel)

    ls = sub.add_parser("ls", help="list effects, newest first")
    ls.add_argument("--run")
    ls.add_argument("--group")
    ls.add_argument("--status")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true")
    ls.add_argument("--db")
    ls.set_defaults(func=cmd_ls)

    show = sub.add_parser("show", help="print an effect's record (or a flow's)")
    show.add_argument("id")
    show.add_argument("--db")
    show.set_defaults(func=cmd_show)

    logs = sub.add_parser("logs", help="print an effect's captured output")
    logs.add_argument("id")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the effect ends")
    logs.add_argument("--db")
    logs.set_defaults(func=cmd_logs)

    journal = sub.add_parser("journal", help="print journal events")
    journal.add_argument("--run")
    journal.add_argument("--follow", "-f", action="store_true")
    journal.add_argument("--json", action="store_true")
    journal.add_argument("--db")
    journal.set_defaults(func=cmd_journal)

    demo = sub.add_parser("demo", help="show effectd end to end (no setup, no network)")
    demo.add_argument("--fast", action="store_true", help=argparse.SUPPRESS)
    demo.set_defaults(func=cmd_demo)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
