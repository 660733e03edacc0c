"""The subcommands that read a journal: ls, show, logs, journal."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from effectd.cli.common import TERMINAL, complain, effect_record, print_json, settings_of
from effectd.journal.projection import command_of
from effectd.journal.reader import JournalReader
from effectd.supervisor.output import read_log

FOLLOW_POLL_S = 0.2


def cmd_ls(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    reader = JournalReader(settings.db)
    rows = reader.effects(run_id=args.run, group=args.group, status=args.status, limit=args.limit)
    if args.json:
        print_json([effect_record(settings, row) for row in rows])
        return 0
    if not rows:
        print(f"no effects in {settings.db}")
        return 0
    from effectd.model.records import seconds_between

    header = f"{'EFFECT':<30} {'STATUS':<10} {'EXIT':>4} {'SECONDS':>8}  {'GROUP':<16} WHAT"
    print(header)
    for row in rows:
        argv = command_of(row["command"], json.loads(row["spec"]))
        what = row["label"] or (row["harness"] and f"[{row['harness']}]") or " ".join(argv)
        seconds = seconds_between(row["started_at"], row["finished_at"])
        print(
            f"{row['effect_id']:<30} {row['status']:<10} {'' if row['exit_code'] is None else row['exit_code']:>4} "
            f"{'' if seconds is None else f'{seconds:.2f}':>8}  {(row['group_name'] or '')[:16]:<16} {what[:60]}"
        )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    reader = JournalReader(settings.db)
    row = reader.effect(args.id)
    if row is not None:
        print_json(effect_record(settings, row))
        return 0
    flow = reader.flow(args.id)
    if flow is not None:
        print_json({**flow, "steps": flow_steps(json.loads(flow["steps"]), reader.effects(group=args.id))})
        return 0
    complain(f"unknown id {args.id} (database {settings.db})")
    return 1


def flow_steps(steps: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A flow's steps as stored, each with its effect's status, whether it was cached (resume), and its
    fan-out children (for_each) in item order."""
    by_id = {row["effect_id"]: row for row in rows}
    children: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for row in rows:
        index = json.loads(row["spec"]).get("item_index")
        if index is not None:
            child = {"index": index, "effect_id": row["effect_id"], "status": row["status"], "error": row["error"]}
            children.setdefault(row["step_id"], []).append((index, child))
    shown = []
    for step in steps:
        row = by_id.get(step["effect_id"]) or {}
        shown.append(
            {
                **step,
                "status": row.get("status"),
                "cached": bool(row.get("cached")),
                "reused_from": row.get("reused_from"),
                "children": [child for _, child in sorted(children.get(step["step_id"], []), key=lambda c: c[0])],
            }
        )
    return shown


def cmd_logs(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    reader = JournalReader(settings.db)
    if reader.effect(args.id) is None:
        complain(f"unknown effect {args.id} (database {settings.db})")
        return 1
    path = settings.output_dir / f"{args.id}.log"
    offset = 0
    out = sys.stdout.buffer
    while True:
        row = reader.effect(args.id)
        while data := read_log(path, offset, 1 << 20):  # a FIFO or a link in its place reads as nothing
            out.write(data)
            out.flush()
            offset += len(data)
        if not args.follow or row is None or row["status"] in TERMINAL:
            return 0
        time.sleep(FOLLOW_POLL_S)


def cmd_journal(args: argparse.Namespace) -> int:
    reader = JournalReader(settings_of(args).db)
    after = 0
    while True:
        for event in reader.events(after, run_id=args.run):
            after = event["seq"]
            if args.json:
                print(json.dumps({**event, "data": json.loads(event["data"])}), flush=True)
            else:
                subject = event["effect_id"] or event["run_id"] or ""
                data = event["data"][:120]
                print(f"{event['seq']:>6} {event['ts']} {event['type']:<24} {subject} {data}", flush=True)
        if not args.follow:
            return 0
        time.sleep(FOLLOW_POLL_S)
