"""What the reading subcommands share: which journal they read, and an effect's record from it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from effectd.config.settings import Settings, build_settings, load_file
from effectd.journal.reader import JournalReader
from effectd.journal.usable import check_journal

TERMINAL = ("succeeded", "failed", "cancelled", "skipped")


def add_database_options(parser: argparse.ArgumentParser) -> None:
    """--db and --config, as `effectd serve` takes them."""
    parser.add_argument("--db", help="journal (default $EFFECTD_DB, else `db` in the config, else .effectd/journal.db)")
    parser.add_argument("--config", help="TOML configuration (default $EFFECTD_CONFIG, else ./effectd.toml)")


def settings_of(args: argparse.Namespace) -> Settings:
    """The settings `effectd serve` would run with given the same --db and --config: so the same journal
    (--db, else $EFFECTD_DB, else `db` in the config file, else ./.effectd/journal.db).

    Raises ConfigError, as serve does, when the configuration is not valid, and JournalUnusableError,
    as serve does, when the journal cannot be used (corrupt, truncated, unreadable, read-only, newer)."""
    settings = build_settings(
        load_file(Path(args.config) if args.config else None), db=Path(args.db) if args.db else None
    )
    check_journal(settings.db, creating=False)  # a journal not created yet reads as empty
    return settings


def effect_record(settings: Settings, row: dict[str, Any]) -> dict[str, Any]:
    """The effect record (as the MCP tools return it) of a projection row, with its captured output."""
    from effectd.supervisor.effect import Effect
    from effectd.supervisor.output import OutputLog

    output = OutputLog.existing(settings.output_dir / f"{row['effect_id']}.log", 1 << 62)
    return Effect.from_row(row, output).record().model_dump(mode="json")


def record_of(settings: Settings, effect_id: str) -> dict[str, Any] | None:
    """The effect's record as the journal has it now, or None when the journal has no such effect."""
    row = JournalReader(settings.db).effect(effect_id)
    return None if row is None else effect_record(settings, row)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def complain(message: str) -> None:
    print(f"effectd: {message}", file=sys.stderr)
