"""`effectd approvals`, `effectd approve ID` and `effectd deny ID`: what sub-agents ask (issue 25), answered
from a terminal.

The list is read from the journal. An answer is asked of the live server whose sub-agent waits for it,
through the journal's `control` table as `effectd cancel` asks (the same window, withdrawn when no server
answered in it, so never carried out later); that server answers it (`decided_by: "cli"`) and leaves the
approval in the request's result. The command never appends to the journal.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from effectd.cli.common import add_database_options, complain, print_json, settings_of
from effectd.journal.reader import JournalReader

# How long the server that took the request may take to answer the approval (one journal write).
RESULT_WITHIN_S = 60.0
POLL_S = 0.05
STATUSES = ("pending", "allowed", "denied", "timed_out")


def cmd_approvals(args: argparse.Namespace) -> int:
    from effectd.model.records import Approval

    settings = settings_of(args)
    status = None if args.all else args.status or "pending"
    found = JournalReader(settings.db).approvals(
        run_id=args.run, group=args.group, effect_id=args.effect, status=status
    )
    print_json([Approval.model_validate(approval).model_dump(mode="json") for approval in found])
    return 0


def cmd_answer(args: argparse.Namespace) -> int:
    """`effectd approve` and `effectd deny`: exit 0 answered (the approval printed), 1 unknown or already
    answered, 2 when no live server answered within the window (the request then withdrawn)."""
    from effectd.cli.cancel import wait_for_answer
    from effectd.model.records import Approval
    from effectd.peers.ownership import runner_alive

    settings = settings_of(args)
    reader = JournalReader(settings.db)
    approval = reader.approval(args.approval_id)
    if approval is None:
        complain(f"unknown approval {args.approval_id} (database {settings.db}; `effectd approvals` lists them)")
        return 1
    if approval["status"] != "pending":
        complain(_answered(approval))
        return 1
    row = reader.effect(approval["effect_id"]) or {}
    if not runner_alive(row.get("owner"), reader.servers(), settings.db):
        complain(
            f"no live effectd server runs {approval['effect_id']}, whose sub-agent asked for {args.approval_id}: "
            "nobody waits for the answer (the next server to start denies it); nothing was answered"
        )
        return 2
    answer = {"approval_id": args.approval_id, "decision": args.decision, "message": args.message}
    request_id = reader.request_control(
        approval["effect_id"], "approve", window_s=args.wait, args={**answer, "decided_by": "cli"}
    )
    verb = "allow" if args.decision == "allow" else "deny"
    replied = wait_for_answer(
        reader, request_id, args.wait, f"asked the server to {verb} {args.approval_id}, waiting..."
    )
    if replied is None:
        complain(f"no live server answered within {args.wait:g} s; the request expired and will not be carried out")
        return 2
    if replied != "accepted":
        complain(f"the server that runs {approval['effect_id']} does not answer approvals ({replied}): upgrade it")
        return 2
    result = _result(reader, request_id)
    if result is None:
        complain(f"the server took the answer but reported nothing within {RESULT_WITHIN_S:g} s; see effectd approvals")
        return 2
    if "error" in result:
        complain(str(result["error"]))
        return 1
    print_json(Approval.model_validate(result["approval"]).model_dump(mode="json"))
    return 0


def _answered(approval: dict[str, Any]) -> str:
    return (
        f"approval {approval['approval_id']} is already answered: {approval['status']} by "
        f"{approval['decided_by']} at {approval['answered_at']}"
    )


def _result(reader: JournalReader, request_id: int) -> dict[str, Any] | None:
    deadline = time.monotonic() + RESULT_WITHIN_S
    while (result := reader.control_result(request_id)) is None and time.monotonic() < deadline:
        time.sleep(POLL_S)
    return result


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    listing = sub.add_parser("approvals", help="list what sub-agents ask to do (the pending requests by default)")
    listing.add_argument("--run", help="only this run's")
    listing.add_argument("--group", help="only this group's")
    listing.add_argument("--effect", help="only this effect's")
    which = listing.add_mutually_exclusive_group()
    which.add_argument("--status", choices=STATUSES, help="only those with this status (default pending)")
    which.add_argument("--all", action="store_true", help="every status")
    add_database_options(listing)
    listing.set_defaults(func=cmd_approvals)
    for name, decision, what in (("approve", "allow", "allow"), ("deny", "deny", "deny")):
        answer = sub.add_parser(name, help=f"{what} what a sub-agent asks (a pending approval)")
        answer.add_argument("approval_id")
        answer.add_argument("--message", help="told to the sub-agent (a denial's why)")
        add_database_options(answer)
        answer.add_argument("--wait", type=float, default=10.0, help=argparse.SUPPRESS)
        answer.set_defaults(func=cmd_answer, decision=decision)
