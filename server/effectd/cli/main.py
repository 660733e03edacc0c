"""The `effectd` command: its arguments, `main()`, and `effectd serve`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from effectd.cli.approvals import add_parsers as add_approvals_parsers
from effectd.cli.common import add_database_options, complain
from effectd.cli.prune import add_prune_parser
from effectd.cli.worktrees import add_parser as add_worktrees_parser
from effectd.config.http import HttpListen, HttpSettings, resolve_token
from effectd.errors import ConfigError, EffectdError
from effectd.support import log_repeats

if TYPE_CHECKING:
    from effectd.protocol.startup import Front


def cmd_serve(args: argparse.Namespace) -> int:
    from effectd.config.settings import build_settings, load_file
    from effectd.journal.usable import check_journal

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="effectd: %(levelname)s %(message)s")
    # effectd's own notices too (where it serves, what it falls back to); the libraries' only from WARNING up.
    logging.getLogger("effectd").setLevel(logging.INFO)
    for handler in logging.getLogger().handlers:  # a fault that repeats is logged once a second, with a count
        log_repeats.install(handler)
    try:
        settings = build_settings(
            load_file(Path(args.config) if args.config else None),
            db=Path(args.db) if args.db else None,
            max_concurrency=args.max_concurrency,
            allow_commands=args.allow_command or (),
            allow_any_command=args.allow_any_command,
            keep_queued=args.keep_queued,
            result_limit_bytes=args.result_limit_bytes,
            runner=args.runner,
            ray_address=args.ray_address,
        )
        check_journal(settings.db)  # before the server's imports: a journal that cannot be used is told at once
        import anyio

        from effectd.app import serve

        http = _http_options(args, settings.http) if args.http else None
        front = None if http is not None else getattr(args, "startup_front", None)
        anyio.run(lambda: serve(settings, http, front=front))
    except BaseException as exc:  # errors raised in the server's task group arrive grouped
        refusals = _effectd_errors(exc)
        if refusals:
            for refusal in refusals:
                complain(str(refusal))
            return 2
        if isinstance(exc, KeyboardInterrupt):
            return 130
        raise
    return 0


def _http_options(args: argparse.Namespace, configured: HttpSettings) -> HttpListen:
    """How to serve HTTP: the flags over the `[http]` table; the token from --token, --token-file,
    $EFFECTD_TOKEN or `token_file`, in that order."""
    if args.max_connections is not None and args.max_connections < 1:
        raise ConfigError(f"--max-connections must be at least 1, not {args.max_connections}")
    return HttpListen(
        host=args.host,
        port=args.port,
        token=resolve_token(args.token, args.token_file, configured) or None,
        max_connections=args.max_connections or configured.max_connections,
        header_timeout_s=configured.header_timeout_s,
    )


def _effectd_errors(exc: BaseException) -> list[EffectdError]:
    if isinstance(exc, EffectdError):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        return [e for inner in exc.exceptions for e in _effectd_errors(inner)]
    return []


def cmd_demo(args: argparse.Namespace) -> int:
    from effectd.demo.main import main as demo_main

    return int(demo_main(fast=args.fast))


def _later(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """A subcommand's function, imported only when that subcommand runs: `effectd serve` starts faster
    for loading none of them (tests/test_startup.py checks what it loads)."""

    def run(args: argparse.Namespace) -> int:
        return int(getattr(importlib.import_module(module), name)(args))

    return run


class _Version(argparse.Action):
    """`effectd --version`: the installed distribution's version, looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print effectd's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        from importlib.metadata import version

        print(f"effectd {version('effectd')}")
        parser.exit()


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="effectd", description="Run effects for agents, supervised and journaled.")
    top.add_argument("--version", action=_Version)
    sub = top.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the MCP server (stdio by default)")
    add_database_options(serve)
    serve.add_argument("--max-concurrency", type=int, help="effects running at once (default 16)")
    serve.add_argument("--allow-command", action="append", metavar="PROG", help="a program command effects may run")
    serve.add_argument("--allow-any-command", action="store_true", help="let command effects run any program")
    serve.add_argument("--keep-queued", action="store_true", help="on stop, keep waiting effects for the next start")
    serve.add_argument(
        "--result-limit-bytes", type=int, metavar="N", help="largest result file read (default 1048576, 1 MiB)"
    )
    serve.add_argument(
        "--runner", choices=("local", "ray"), help="where effects run (default local; also $EFFECTD_RUNNER)"
    )
    serve.add_argument("--ray-address", help="the Ray cluster of --runner ray (default $RAY_ADDRESS, else a local Ray)")
    serve.add_argument("--http", action="store_true", help="serve streamable HTTP at /mcp instead of stdio")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument("--token", help="bearer token HTTP clients must send (visible in the process list)")
    serve.add_argument(
        "--token-file",
        metavar="PATH",
        help="a file holding the bearer token (default $EFFECTD_TOKEN, else the config's)",
    )
    serve.add_argument("--max-connections", type=int, metavar="N", help="open HTTP connections at most (default 256)")
    serve.set_defaults(func=cmd_serve)

    cancel = sub.add_parser("cancel", help="cancel an effect of the live server")
    cancel.add_argument("effect_id")
    cancel.add_argument("--run", help="the effect's run (checked)")
    cancel.add_argument("--reason", help="kept as the effect's cancel_message")
    add_database_options(cancel)
    cancel.add_argument("--wait", type=float, default=10.0, help=argparse.SUPPRESS)
    cancel.set_defaults(func=_later("effectd.cli.cancel", "cmd_cancel"))

    add_prune_parser(sub)
    add_approvals_parsers(sub)

    ls = sub.add_parser("ls", help="list effects, newest first")
    ls.add_argument("--run")
    ls.add_argument("--group")
    ls.add_argument("--status")
    ls.add_argument("--limit", type=int, default=50)
    ls.add_argument("--json", action="store_true")
    add_database_options(ls)
    ls.set_defaults(func=_later("effectd.cli.readers", "cmd_ls"))

    show = sub.add_parser("show", help="print an effect's record (or a flow's)")
    show.add_argument("id")
    add_database_options(show)
    show.set_defaults(func=_later("effectd.cli.readers", "cmd_show"))

    logs = sub.add_parser("logs", help="print an effect's captured output")
    logs.add_argument("id")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the effect ends")
    add_database_options(logs)
    logs.set_defaults(func=_later("effectd.cli.readers", "cmd_logs"))

    journal = sub.add_parser("journal", help="print journal events")
    journal.add_argument("--run")
    journal.add_argument("--follow", "-f", action="store_true")
    journal.add_argument("--json", action="store_true")
    add_database_options(journal)
    journal.set_defaults(func=_later("effectd.cli.readers", "cmd_journal"))

    add_worktrees_parser(sub)

    doctor = sub.add_parser("doctor", help="print what this host supports: limits, sandbox, containment, git, journal")
    add_database_options(doctor)
    doctor.set_defaults(func=_later("effectd.cli.doctor", "cmd_doctor"))

    demo = sub.add_parser("demo", help="show effectd end to end (no setup, no network)")
    demo.add_argument("--fast", action="store_true", help=argparse.SUPPRESS)
    demo.set_defaults(func=cmd_demo)
    return top


def main(argv: Sequence[str] | None = None, front: Front | None = None) -> int:
    """Runs the command; `front`: the start-up cache's, already answering (cli.launch starts it)."""
    args = parser().parse_args(argv)
    args.startup_front = front
    try:
        return int(args.func(args))
    except EffectdError as exc:  # a configuration the reading subcommands cannot use (serve reports its own)
        complain(str(exc))
        return 2
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130
