"""`kerrera start`: run a worker node until SIGTERM/SIGINT.

The node is a `Kerrera` instance built from the options; the first signal drains it
(running jobs get the grace period), a second one ends at once. `parse_queues` and
`run_until_signalled` are shared with Django's `manage.py kerrera start`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import re
import signal
import sys
import traceback
from typing import Any

from kerrera import telemetry
from kerrera.app.facade import Kerrera
from kerrera.core.errors import ConfigError, KerreraError
from kerrera.core.options import check_queue
from kerrera.engine.embedded import abandon, embedded_folder, folder_lost

log = logging.getLogger("kerrera.cli")
#: Seconds between checks that the embedded database's folder is still there.
FOLDER_CHECK = 1.0


def parse_queues(text: str) -> dict[str, int]:
    """`default:10,media:2` -> {"default": 10, "media": 2}.

    A bare name keeps the default limit of 10 (`default` -> {"default": 10}), except one
    that ends in digits (`default10`): that is almost always a forgotten colon, so it is
    refused with the reading it probably meant (write `v2:10` for a queue named `v2`).
    Empty names, limits below 1 and a queue named twice are refused too. An empty text
    means no queues (a node that only runs the cluster's services).
    """
    queues: dict[str, int] = {}
    if not text.strip():
        return queues
    for part in (p.strip() for p in text.split(",")):
        name, colon, limit = (s.strip() for s in part.partition(":"))
        if not name:
            what = "an empty queue name" if part else "an empty entry"
            raise ConfigError(f"option '--queues': {what} in {text!r} (use name:limit,...)")
        if name in queues:
            raise ConfigError(f"option '--queues': queue {name!r} is named twice in {text!r}")
        queues[check_queue(name, "--queues")] = _queue_limit(part, name, colon, limit)
    return queues


def _queue_limit(part: str, name: str, colon: str, limit: str) -> int:
    if not colon:
        glued = re.fullmatch(r"(.*\D)(\d+)", name)
        if glued:
            raise ConfigError(
                f"option '--queues': {part!r} has no ':' before its limit; did you mean "
                f"'{glued[1]}:{glued[2]}'? (for a queue named {name!r}, write '{name}:10')"
            )
        return 10
    try:
        value = int(limit)
    except ValueError:
        raise ConfigError(
            f"option '--queues': bad limit in {part!r} (use name:limit, e.g. {name}:10)"
        ) from None
    if value < 1:
        raise ConfigError(f"option '--queues': the limit of {name!r} must be >= 1, got {value}")
    return value


def parse_cron(text: str) -> tuple[str, str]:
    """`'*/5 * * * * pkg.worker'` or `'@daily pkg.worker'` -> (expression, worker name)."""
    parts = text.split()
    fields = 1 if parts and parts[0].startswith("@") else 5
    if len(parts) != fields + 1:
        raise ConfigError(f"--cron {text!r}: expected {fields} schedule field(s) and a worker name")
    return " ".join(parts[:fields]), parts[fields]


def add_parser(sub: Any, common: Any) -> None:
    """Register `kerrera start [--queues name:limit,...] [--module pkg.workers] ...`."""
    parser = sub.add_parser("start", help="run a worker node until SIGTERM/SIGINT")
    common(parser)
    # The groups keep the order in which `kerrera start --help` has always listed them.
    _node_options(parser)
    _rescue_options(parser)
    parser.add_argument(
        "--no-migrate",
        action="store_true",
        help="refuse to start on an out-of-date schema instead of migrating",
    )
    _leader_options(parser)
    _observability_options(parser)
    parser.add_argument(
        "--reindex-schedule",
        default="@daily",
        help="cron expression (UTC) for rebuilding indexes; 'never' to skip",
    )


def _node_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queues", default="default:10", help="name:limit,... (default:10)")
    parser.add_argument(
        "--module",
        "-m",
        action="append",
        default=[],
        help="module that defines workers (repeatable)",
    )
    parser.add_argument("--node", help="node name (hostname-pid)")
    parser.add_argument(
        "--shutdown-grace-period",
        type=float,
        default=15.0,
        help="seconds to let running jobs finish on shutdown (15)",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        default=10.0,
        help="seconds between producer heartbeats (10)",
    )


def _rescue_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--producer-ttl",
        type=float,
        default=30.0,
        help="silence after which a node's jobs are rescued (30)",
    )
    parser.add_argument(
        "--rescue-interval", type=float, default=15.0, help="seconds between lifeline runs (15)"
    )
    parser.add_argument(
        "--rescue-after",
        type=float,
        default=3600.0,
        help="rescue jobs of producers never seen here after this (3600)",
    )


def _leader_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-leader",
        action="store_true",
        help="never lead (the leader runs the stager, pruner, cron, reindexer)",
    )
    parser.add_argument(
        "--leader-lease",
        type=float,
        default=30.0,
        help="seconds a leader's lease lasts without renewal (30)",
    )
    parser.add_argument(
        "--cron",
        action="append",
        default=[],
        metavar="'EXPR WORKER'",
        help="a cron entry: 5 fields or @nickname, then a worker name "
        "(repeatable), e.g. '*/5 * * * * myapp.jobs.digest'",
    )
    parser.add_argument(
        "--prune-max-age",
        type=float,
        default=7 * 86400.0,
        help="delete finished jobs older than this many seconds (7 days); 0 keeps them",
    )


def _observability_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="level of Kerrera's log lines (info: one per finished job; warning: failed "
        "and cancelled jobs only; error: discarded jobs only)",
    )
    parser.add_argument(
        "--log-events",
        action="store_true",
        help="log each job outcome and service run as one JSON object per line (stderr)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on this port (needs kerrera[prometheus]), e.g. 9464",
    )
    parser.add_argument(
        "--metrics-addr",
        default="0.0.0.0",
        help="address the metrics server binds to (0.0.0.0)",
    )


async def run(args: argparse.Namespace) -> int:
    """Carry out `kerrera start ...`: build the node, run it until signalled."""
    sys.path.insert(0, os.getcwd())  # like `python -m`: modules of the current project
    for module in args.module:
        import_module(module)
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
    lost: list[str] = []
    abort = asyncio.Event()
    guard = asyncio.create_task(_guard_data_folder(app, abort, lost))
    try:
        await run_until_signalled(app, abort=abort)
    finally:
        guard.cancel()
        if metrics is not None:
            metrics.close()
    if lost:
        raise KerreraError(lost[0])
    return 0


async def _guard_data_folder(app: Kerrera, abort: asyncio.Event, lost: list[str]) -> None:
    """On the embedded database: stop the node if its data folder is deleted. Its server
    goes with the folder (PostgreSQL ends once its lock file is gone), and the node would
    otherwise retry connections forever, or reach a new, empty server started there."""
    try:
        pgdata = embedded_folder(await asyncio.to_thread(lambda: app.dsn))
    except Exception:  # starting the node fails with the same error, and says it
        return
    if pgdata is None:
        return
    while not folder_lost(pgdata):
        await asyncio.sleep(FOLDER_CHECK)
    lost.append(
        f"the embedded database's folder {pgdata} was deleted while this node used it, "
        "with the jobs in it; start again to create a new, empty one"
    )
    log.error("%s: stopping", lost[0])
    abandon(pgdata)
    abort.set()


def import_module(name: str) -> None:
    """Import a `--module`; any failure is one line naming the module and the error
    (its traceback is logged at DEBUG: `kerrera -vv start ...`)."""
    try:
        importlib.import_module(name)
    except Exception as exc:
        log.debug("importing %s failed", name, exc_info=True)
        missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
        if missing and (name == missing or name.startswith(f"{missing}.")):
            where = f"the current directory ({os.getcwd()}) and sys.path"
            raise ConfigError(f"option '--module': no module {missing!r} in {where}") from None
        frames = traceback.extract_tb(exc.__traceback__)
        mine = [f for f in frames if "importlib" not in f.filename]
        at = f" (at {mine[-1].filename}:{mine[-1].lineno})" if mine else ""
        if isinstance(exc, SyntaxError) and exc.filename:
            at = f" (at {exc.filename}:{exc.lineno})"
            what = f"SyntaxError: {exc.msg}"
        else:
            what = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
        raise ConfigError(f"option '--module': importing {name!r} failed: {what}{at}") from None


def _log_events() -> None:
    """JSON lines on stderr, undecorated, whatever the rest of the logging looks like."""
    events = logging.getLogger("kerrera.events")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    events.addHandler(handler)
    events.setLevel(logging.INFO)
    events.propagate = False
    telemetry.attach_default_logger(logging.INFO)


async def run_until_signalled(app: Kerrera, *, abort: asyncio.Event | None = None) -> None:
    """Run `app` until SIGTERM/SIGINT: the first drains (grace period), a second one
    ends at once (running jobs are put back to available without waiting). `abort`, when
    set, stops it at once too (the database is gone: there is nothing to drain into)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals: list[int] = []

    def on_signal(signum: int) -> None:
        # The stop first: saying so may fail (stderr piped to a reader that is gone),
        # and nothing that is said may keep the node from stopping.
        signals.append(signum)
        if len(signals) == 1:
            stop.set()
            log.warning(
                "received %s: draining (again to stop at once)", signal.Signals(signum).name
            )
            say("kerrera: shutting down; send the signal again to stop at once")
        else:
            hurry.set()

    hurry = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await app.start()
    say(f"kerrera: node {app.node} running queues {dict(app.config.queues)}")
    aborting = None if abort is None else asyncio.create_task(_aborted(abort, stop, hurry))
    await stop.wait()
    if aborting is not None:
        aborting.cancel()
    stopping = asyncio.create_task(app.stop(exiting=True))  # the process exits after it
    hurried = asyncio.create_task(hurry.wait())
    done, _ = await asyncio.wait({stopping, hurried}, return_when=asyncio.FIRST_COMPLETED)
    if stopping not in done:
        app.hurry()  # the producers put the running jobs back before stop() returns
        await stopping
    hurried.cancel()
    say("kerrera: stopped")


async def _aborted(abort: asyncio.Event, stop: asyncio.Event, hurry: asyncio.Event) -> None:
    await abort.wait()
    hurry.set()
    stop.set()


def say(line: str) -> None:
    """One line to stderr; a stderr that cannot be written (a closed pipe) is ignored,
    so that reporting never breaks starting or stopping."""
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)
