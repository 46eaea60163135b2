"""`kerrera migrate`: bring the schema up to date, revert the last N migrations, or print
the current version. It runs on one plain connection, without starting a node."""

from __future__ import annotations

import argparse
from typing import Any

import psycopg

from kerrera.core.errors import ConfigError
from kerrera.engine.embedded import resolve_dsn
from kerrera.engine.migrations import (
    LATEST_VERSION,
    current_version,
    migrate_down,
    migrate_up,
    oban_tables,
)


def add_parser(sub: Any, common: Any) -> None:
    """Register `kerrera migrate [--down N [--drop-oban-tables] | --status]`."""
    parser = sub.add_parser("migrate", help="bring the schema up to date (or down)")
    common(parser)
    parser.add_argument(
        "--down",
        type=int,
        metavar="N",
        help="revert the last N migrations (Oban's tables are kept: an Elixir node may use them)",
    )
    parser.add_argument(
        "--drop-oban-tables",
        action="store_true",
        help="with --down past version 1: drop oban_jobs, oban_peers and their type too, "
        "if Kerrera created them and they hold nothing",
    )
    parser.add_argument("--status", action="store_true", help="print the current version only")


def run(args: argparse.Namespace) -> int:
    """Carry out `kerrera migrate ...` (synchronous: no event loop is needed)."""
    if args.drop_oban_tables and args.down is None:
        raise ConfigError("option '--drop-oban-tables' goes with '--down N'")
    dsn = resolve_dsn(args.dsn, args.data_dir)
    with psycopg.connect(dsn, autocommit=True) as conn:
        if args.status:
            print(f"version {current_version(conn, args.prefix)} (latest {LATEST_VERSION})")
        elif args.down is not None:
            _migrate_down(conn, args)
        else:
            done = migrate_up(conn, args.prefix)
            print(
                f"applied {done or 'nothing'}; now at version {current_version(conn, args.prefix)}"
            )
    return 0


def _migrate_down(conn: psycopg.Connection[Any], args: argparse.Namespace) -> None:
    if args.down < 1:
        raise ConfigError(f"option '--down' must be a number of steps >= 1, got {args.down}")
    done = migrate_down(conn, args.prefix, args.down, drop_oban_tables=args.drop_oban_tables)
    print(f"reverted {done or 'nothing'}; now at version {current_version(conn, args.prefix)}")
    kept = oban_tables(conn, args.prefix) if 1 in done else []
    if kept:
        print(
            f"kept Oban's tables in {args.prefix} ({', '.join(kept)}): an Elixir node may "
            "use them; --drop-oban-tables drops them when Kerrera created them and they "
            "hold nothing"
        )
    elif 1 in done and args.drop_oban_tables:
        print(f"dropped Oban's tables in {args.prefix}")
