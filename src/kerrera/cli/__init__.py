"""The `kerrera` command: migrate, start a node, run the demo."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from kerrera._errors import ConfigError, KerreraError
from kerrera.cli import jobs, queues, top

log = logging.getLogger("kerrera.cli")


def parse_queues(text: str) -> dict[str, int]:
    """`default:10,media:2` -> {"default": 10, "media": 2} (a bare name gets limit 10)."""
    queues: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, limit = part.partition(":")
        try:
            queues[name.strip()] = int(limit) if limit else 10
        except ValueError:
            raise ConfigError(
                f"option '--queues': bad limit in {part!r} (use name:limit)"
            ) from None
    return queues


def parse_cron(text: str) -> tuple[str, str]:
    """`'*/5 * * * * pkg.worker'` or `'@daily pkg.worker'` -> (expression, worker name)."""
    parts = text.split()
    fields = 1 if parts and parts[0].startswith("@") else 5
    if len(parts) != fields + 1:
        raise ConfigError(f"--cron {text!r}: expected {fields} schedule field(s) and a worker name")
    return " ".join(parts[:fields]), parts[fields]


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

    mig = sub.add_parser("migrate", help="bring the schema up to date (or down)")
    _common(mig)
    mig.add_argument(
        "--down",
        type=int,
        metavar="N",
        help="revert the last N migrations (Oban's tables are kept: an Elixir node may use them)",
    )
    mig.add_argument(
        "--drop-oban-tables",
        action="store_true",
        help="with --down past version 1: drop oban_jobs, oban_peers and their type too, "
        "if Kerrera created them and they hold nothing",
    )
    mig.add_argument("--status", action="store_true", help="print the current version only")

    start = sub.add_parser("start", help="run a worker node until SIGTERM/SIGINT")
    _common(start)
    start.add_argument("--queues", default="default:10", help="name:limit,... (default:10)")
    start.add_argument(
        "--module",
        "-m",
        action="append",
        default=[],
        help="module that defines workers (repeatable)",
    )
    start.add_argument("--node", help="node name (hostname-pid)")
    start.add_argument(
        "--shutdown-grace-period",
        type=float,
        default=15.0,
        help="seconds to let running jobs finish on shutdown (15)",
    )
    start.add_argument(
        "--heartbeat-interval",
        type=float,
        default=10.0,
        help="seconds between producer heartbeats (10)",
    )
    start.add_argument(
        "--producer-ttl",
        type=float,
        default=30.0,
        help="silence after which a node's jobs are rescued (30)",
    )
    start.add_argument(
        "--rescue-interval", type=float, default=15.0, help="seconds between lifeline runs (15)"
    )
    start.add_argument(
        "--rescue-after",
        type=float,
        default=3600.0,
        help="rescue jobs of producers never seen here after this (3600)",
    )
    start.add_argument(
        "--no-migrate",
        action="store_true",
        help="refuse to start on an out-of-date schema instead of migrating",
    )
    start.add_argument(
        "--no-leader",
        action="store_true",
        help="never lead (the leader runs the stager, pruner, cron, reindexer)",
    )
    start.add_argument(
        "--leader-lease",
        type=float,
        default=30.0,
        help="seconds a leader's lease lasts without renewal (30)",
    )
    start.add_argument(
        "--cron",
        action="append",
        default=[],
        metavar="'EXPR WORKER'",
        help="a cron entry: 5 fields or @nickname, then a worker name "
        "(repeatable), e.g. '*/5 * * * * myapp.jobs.digest'",
    )
    start.add_argument(
        "--prune-max-age",
        type=float,
        default=7 * 86400.0,
        help="delete finished jobs older than this many seconds (7 days); 0 keeps them",
    )
    start.add_argument(
        "--log-events",
        action="store_true",
        help="log each job outcome and service run as one JSON object per line (stderr)",
    )
    start.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on this port (needs kerrera[prometheus]), e.g. 9464",
    )
    start.add_argument(
        "--metrics-addr",
        default="0.0.0.0",
        help="address the metrics server binds to (0.0.0.0)",
    )
    start.add_argument(
        "--reindex-schedule",
        default="@daily",
        help="cron expression (UTC) for rebuilding indexes; 'never' to skip",
    )

    queues.add_parser(sub, _common)
    jobs.add_parser(sub, _common)
    top.add_parser(sub, _common)

    demo = sub.add_parser("demo", help="run a small media pipeline on the embedded database")
    _common(demo)
    demo.add_argument("--tracks", type=int, default=1000, help="tracks to process (1000)")
    demo.add_argument(
        "--fail-rate", type=float, default=0.1, help="share of steps that fail once and retry (0.1)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `kerrera` command."""
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "migrate":
            return _migrate(args)
        if args.command == "start":
            return _run(_start(args))
        if args.command == "queues":
            return _run(queues.run(args))
        if args.command == "jobs":
            return _run(jobs.run(args))
        if args.command == "top":
            return _run(top.run(args))
        if args.command == "demo":
            from kerrera.cli.demo import run_demo

            return _run(run_demo(args))
    except KerreraError as exc:
        print(f"kerrera: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        import psycopg

        if not isinstance(exc, psycopg.Error):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"kerrera: error: database: {first}", file=sys.stderr)
        return 2
    return 0  # pragma: no cover - argparse requires a command


def _run(coro: Any) -> int:
    try:
        import uvloop
    except ImportError:
        return int(asyncio.run(coro) or 0)
    return int(uvloop.run(coro) or 0)


def _migrate(args: argparse.Namespace) -> int:
    import psycopg

    from kerrera._embedded import resolve_dsn
    from kerrera.migrations import LATEST_VERSION, current_version, migrate_up

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


def _migrate_down(conn: Any, args: argparse.Namespace) -> None:
    from kerrera.migrations import current_version, migrate_down, oban_tables

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


async def _start(args: argparse.Namespace) -> int:
    from kerrera._app import Kerrera

    sys.path.insert(0, os.getcwd())  # like `python -m`: modules of the current project
    for module in args.module:
        importlib.import_module(module)
    app = Kerrera(
        args.dsn, queues=parse_queues(args.queues), prefix=args.prefix, node=args.node,
        migrate=not args.no_migrate, shutdown_grace_period=args.shutdown_grace_period,
        data_dir=args.data_dir, heartbeat_interval=args.heartbeat_interval,
        producer_ttl=args.producer_ttl, rescue_interval=args.rescue_interval,
        rescue_after=args.rescue_after, leader=not args.no_leader,
        leader_lease=args.leader_lease, crontab=[parse_cron(c) for c in args.cron],
        prune_max_age=args.prune_max_age or None,
        reindex_schedule=None if args.reindex_schedule == "never" else args.reindex_schedule,
    )  # fmt: skip
    if args.log_events:
        _log_events()
    metrics = None
    if args.metrics_port is not None:
        try:
            from kerrera.telemetry.prometheus import serve
        except ImportError as exc:  # the optional extra is missing: say so in one line
            raise ConfigError(f"option '--metrics-port': {exc}") from None
        metrics = serve(app, args.metrics_port, addr=args.metrics_addr)
    try:
        await run_until_signalled(app)
    finally:
        if metrics is not None:
            metrics.close()
    return 0


def _log_events() -> None:
    """JSON lines on stderr, undecorated, whatever the rest of the logging looks like."""
    from kerrera import telemetry

    events = logging.getLogger("kerrera.events")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    events.addHandler(handler)
    events.setLevel(logging.INFO)
    events.propagate = False
    telemetry.attach_default_logger(logging.INFO)


async def run_until_signalled(app: Any) -> None:
    """Run `app` until SIGTERM/SIGINT: the first drains (grace period), a second one
    ends at once (running jobs are put back to available without waiting)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals: list[int] = []

    def on_signal(signum: int) -> None:
        signals.append(signum)
        if len(signals) == 1:
            log.warning(
                "received %s: draining (again to stop at once)", signal.Signals(signum).name
            )
            print(
                "kerrera: shutting down; send the signal again to stop at once",
                file=sys.stderr,
                flush=True,
            )
            stop.set()
        else:
            hurry.set()

    hurry = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await app.start()
    print(
        f"kerrera: node {app.node} running queues {dict(app.config.queues)}",
        file=sys.stderr,
        flush=True,
    )
    await stop.wait()
    stopping = asyncio.create_task(app.stop(exiting=True))  # the process exits after it
    hurried = asyncio.create_task(hurry.wait())
    done, _ = await asyncio.wait({stopping, hurried}, return_when=asyncio.FIRST_COMPLETED)
    if stopping not in done:
        app.hurry()  # the producers put the running jobs back before stop() returns
        await stopping
    hurried.cancel()
    print("kerrera: stopped", file=sys.stderr, flush=True)
