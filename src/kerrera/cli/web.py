"""`kerrera web`: serve the dashboard; `kerrera web doctor`: check what it needs of the
database (indexes, fresh statistics); `kerrera web indexes`: build its opt-in indexes."""

from __future__ import annotations

import argparse
import asyncio
import importlib
from typing import Any

import psycopg

from kerrera import Kerrera
from kerrera.core.errors import ConfigError
from kerrera.engine.dashboard import Dashboard
from kerrera.engine.migrations.web import create_dashboard_indexes, drop_dashboard_indexes


def add_parser(sub: Any, common: Any) -> None:
    """Register `kerrera web [doctor]` and its options."""
    parser = sub.add_parser(
        "web",
        help="serve the dashboard (or: web doctor)",
        description="Serve the dashboard (needs the web extra: pip install 'kerrera[web]'). "
        "It binds 127.0.0.1 unless told otherwise; a non-loopback bind needs "
        "--basic-auth or --resolver, or --insecure.",
    )
    common(parser)
    parser.add_argument("what", nargs="?", choices=["serve", "doctor", "indexes"],
                        default="serve",
                        help="serve (default); doctor: report missing indexes and stale "
                        "statistics; indexes: build the dashboard's indexes (opt-in: "
                        "fast lists and searches on large tables, at a cost to every "
                        "insert and ack)")  # fmt: skip
    parser.add_argument("--drop", action="store_true",
                        help="with indexes: drop the dashboard's indexes instead")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=9400, help="port (9400; 0 picks a free one)")
    parser.add_argument("--insecure", action="store_true",
                        help="allow a non-loopback bind without authentication")  # fmt: skip
    parser.add_argument("--basic-auth", action="store_true",
                        help="require HTTP Basic: user $KERRERA_WEB_USER (default admin), "
                        "password $KERRERA_WEB_PASSWORD")  # fmt: skip
    parser.add_argument("--access", default="all", choices=["all", "read_only"],
                        help="what the --basic-auth user may do (all)")  # fmt: skip
    parser.add_argument("--resolver", default=None, metavar="MODULE:FUNCTION",
                        help="your auth hook: called with each request, returns a "
                        "kerrera.web.User or None")  # fmt: skip


async def run(args: argparse.Namespace) -> int:
    """Serve, or run the doctor."""
    if args.what == "doctor":
        return await doctor(args)
    if args.what == "indexes":
        return await indexes(args)
    try:
        # Loaded by name: the dashboard sits above the CLI in the layers, and its
        # dependencies (Starlette, Jinja2, uvicorn) come with an optional extra.
        serve = importlib.import_module("kerrera.web.serve")
    except ImportError as exc:
        raise ConfigError(
            f"kerrera web needs the web extra ({exc.name} is missing): pip install 'kerrera[web]'"
        ) from None
    code: int = await serve.serve(args)
    return code


async def doctor(args: argparse.Namespace) -> int:
    """Print the doctor's findings; exit 1 when any is an error or a warning."""
    probe = Kerrera(args.dsn, prefix=args.prefix, data_dir=args.data_dir, migrate=False)
    dsn = await asyncio.to_thread(lambda: probe.dsn)
    dashboard = await Dashboard.connect(dsn, args.prefix)
    try:
        findings = await dashboard.doctor()
    finally:
        await dashboard.close()
    for finding in findings:
        print(f"{finding.level:8} {finding.subject}: {finding.message}")
        if finding.fix:
            print(f"         fix: {finding.fix}")
    if not findings:
        print("ok       nothing to report")
    return 1 if any(f.level in ("error", "warning") for f in findings) else 0


async def indexes(args: argparse.Namespace) -> int:
    """Build (or with --drop, drop) the dashboard's indexes, concurrently."""
    probe = Kerrera(args.dsn, prefix=args.prefix, data_dir=args.data_dir, migrate=False)
    dsn = await asyncio.to_thread(lambda: probe.dsn)

    def work() -> list[str]:
        with psycopg.connect(dsn, autocommit=True) as conn:
            change = drop_dashboard_indexes if args.drop else create_dashboard_indexes
            return change(conn, args.prefix)

    names = await asyncio.to_thread(work)
    verb = "dropped" if args.drop else "built"
    print(f"kerrera: {verb} {len(names)} dashboard indexes: {', '.join(names)}")
    return 0
