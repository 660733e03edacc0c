"""`effectd prune --older-than DURATION [--journal]`: removes the output of effects that ended before then,
and with `--journal` their events and rows (see `effectd.engine.prune`).

With a live server on the journal, the server prunes (asked through the control table, as
`effectd cancel` asks, within the same 10 s window), so its effects in memory follow; with none, this
command prunes under the journal's lock, so no server starts meanwhile.
"""

from __future__ import annotations

import argparse
import time

from effectd.cli.common import complain, print_json, settings_of
from effectd.errors import EffectdError
from effectd.journal.reader import JournalReader

# How long a live server may take to prune once it has accepted (a large journal's VACUUM).
PRUNE_WITHIN_S = 3600.0


def cmd_prune(args: argparse.Namespace) -> int:
    import anyio

    from effectd.cli.cancel import wait_for_answer
    from effectd.engine.prune import cutoff, parse_duration, prune_offline
    from effectd.peers.ownership import server_alive

    settings = settings_of(args)
    before = cutoff(parse_duration(args.older_than))
    if not settings.db.exists():
        complain(f"no journal at {settings.db}: nothing to prune")
        return 0
    reader = JournalReader(settings.db)
    if not any(server_alive(row, settings.db) for row in reader.servers().values()):
        try:
            done = anyio.run(
                lambda: prune_offline(settings.db, settings.output_dir, before, forget_journal=args.journal)
            )
        except EffectdError as exc:  # a server took the journal meanwhile (DatabaseBusyError)
            complain(f"{exc}; run effectd prune again to have that server prune")
            return 2
        print_json(done)
        return 0
    request_id = reader.request_control(
        "", "prune", window_s=args.wait, args={"before": before, "journal": bool(args.journal)}
    )
    answer = wait_for_answer(reader, request_id, args.wait, "asked the live server to prune, waiting...")
    if answer != "accepted":
        complain(f"no live server answered within {args.wait:g} s; nothing was pruned")
        return 2
    deadline = time.monotonic() + PRUNE_WITHIN_S
    while (report := reader.control_result(request_id)) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if report is None or "error" in report:
        complain(f"the server could not prune: {(report or {}).get('error', 'no report within the hour')}")
        return 2
    print_json(report)
    return 0


def add_prune_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from effectd.cli.common import add_database_options

    prune = sub.add_parser("prune", help="remove the output (and with --journal the records) of old effects")
    prune.add_argument(
        "--older-than",
        required=True,
        metavar="DURATION",
        help="effects that ended longer ago than this (30d, 12h, 90m, 45s, 2w; a bare number is seconds)",
    )
    prune.add_argument(
        "--journal", action="store_true", help="also remove their events and rows, and compact the journal"
    )
    add_database_options(prune)
    prune.add_argument("--wait", type=float, default=10.0, help=argparse.SUPPRESS)
    prune.set_defaults(func=cmd_prune)
