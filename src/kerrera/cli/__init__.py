"""The `kerrera` command: migrate, start a node, run the demo."""

# The docstring above is `kerrera --help`'s description. Each sub-command owns a module
# (migrate, start, queues, jobs, top, demo) with `add_parser(sub, common)`, which
# registers its options, and the handler that carries it out; this module only
# assembles the parser, sets up logging, dispatches and turns errors into exit codes.

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import psycopg

from kerrera.cli import demo, jobs, migrate, queues, start, top, web, workflows
from kerrera.cli.start import parse_cron, parse_queues, run_until_signalled
from kerrera.core.errors import KerreraError
from kerrera.engine.embedded import check_dsn

__all__ = ["build_parser", "main", "parse_cron", "parse_queues", "run_until_signalled"]

#: The handlers of the sub-commands that run on an event loop (all but `migrate`).
_ASYNC_COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "start": start.run,
    "queues": queues.run,
    "jobs": jobs.run,
    "top": top.run,
    "workflows": workflows.run,
    "demo": demo.run_demo,
    "web": web.run,
}


def _common(parser: argparse.ArgumentParser, *, nested: bool = False) -> None:
    # A nested sub-command (`queues pause`) accepts these too, without defaults of its
    # own: argparse would let them overwrite what was given before the sub-command.
    default = (lambda value: argparse.SUPPRESS) if nested else (lambda value: value)
    parser.add_argument(
        "--dsn",
        default=default(None),
        help="PostgreSQL URL (default: $KERRERA_DATABASE_URL, "
        "$DATABASE_URL, else the embedded database)",
    )
    parser.add_argument("--prefix", default=default("public"), help="schema of the tables (public)")
    parser.add_argument(
        "--data-dir",
        default=default(".kerrera"),
        help="where the embedded database lives (.kerrera)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `kerrera` (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(prog="kerrera", description=__doc__)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True)
    # In the order `kerrera --help` lists them.
    migrate.add_parser(sub, _common)
    start.add_parser(sub, _common)
    queues.add_parser(sub, _common)
    jobs.add_parser(sub, _common)
    top.add_parser(sub, _common)
    workflows.add_parser(sub, _common)
    demo.add_parser(sub, _common)
    web.add_parser(sub, _common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `kerrera` command."""
    args = build_parser().parse_args(argv)
    _configure_logging(args)
    try:
        if getattr(args, "dsn", None):
            check_dsn(args.dsn, "option '--dsn'")
        if args.command == "migrate":
            return migrate.run(args)  # a plain connection: no event loop
        return _run(_ASYNC_COMMANDS[args.command](args))
    except KerreraError as exc:
        print(f"kerrera: error: {exc}", file=sys.stderr)
        return 2
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"kerrera: error: database: {first}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader of our output left (`kerrera jobs list | head`): stop quietly, as
        # other commands do. Point stdout at nothing so the flush at exit cannot fail too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # what a shell reports for a command SIGPIPE ended (128 + 13)


class UTCFormatter(logging.Formatter):
    """`2026-12-03 14:58:30.123Z LEVEL logger: message`: log times in UTC, as the
    command's tables show them."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s",
            datefmt="%Y-%m-%d %H:%M:%S",
        )
        self.converter = time.gmtime


def _configure_logging(args: argparse.Namespace) -> None:
    """Warnings and errors on stderr (more with -v). A node (`kerrera start`) also logs
    Kerrera's INFO lines, among them one per finished job, unless `--log-level` says
    otherwise; other libraries stay at WARNING so that their chatter does not bury them."""
    level = logging.WARNING - 10 * min(args.verbose, 2)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(UTCFormatter())
    logging.basicConfig(level=level, handlers=[handler])
    if args.command == "start":
        wanted = logging.getLevelNamesMapping()[args.log_level.upper()]
        logging.getLogger("kerrera").setLevel(min(level, wanted))


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:
        return int(asyncio.run(coro) or 0)
    return int(uvloop.run(coro) or 0)
