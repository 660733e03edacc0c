"""The `effectd` command's entry point: starts the start-up cache's front for `effectd serve` over stdio
before anything slow is imported (effectd.protocol.startup), then runs the command (effectd.cli.main).

This module and what it imports before the front runs are the standard library's and the front's only:
`effectd.cli.main` alone imports pydantic and the configuration's models (~0.2 s)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    front = None
    if args[:1] == ["serve"]:
        from effectd.protocol.startup import Front

        front = Front.start(args[1:])
    from effectd.cli.main import main as run

    return run(args, front=front)
