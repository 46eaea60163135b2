"""`kerrera demo`: run a small media pipeline and watch it go through the queues.

It inserts one `Download` job per track; each step enqueues the next (download ->
separate -> analyse, see `demo_workers`). Progress is read from the jobs table with one
small read-only query every quarter second, so what is shown is what is stored.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import psycopg
from psycopg import sql
from rich.console import Console
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn,
)  # fmt: skip
from rich.table import Table

from kerrera import Job, JobState, Kerrera
from kerrera.cli import demo_workers
from kerrera.cli.demo_workers import QUEUES, WORKER_NAMES, Download

T = TypeVar("T")

POLL_SECONDS = 0.25
PLAIN_EVERY_SECONDS = 2.0
TERMINAL = frozenset(s.value for s in JobState if s.terminal)
STEPS = len(QUEUES)

_COUNT = """
SELECT queue, state::text, count(*)::int,
       count(*) FILTER (WHERE cardinality(errors) > 0)::int,
       count(*) FILTER (WHERE meta ? 'snoozed')::int
FROM {table}
WHERE id >= %s AND worker = ANY(%s)
GROUP BY 1, 2
"""


@dataclass
class Counts:
    """This run's jobs by (queue, state), and per queue how many were retried or snoozed."""

    states: dict[tuple[str, str], int] = field(default_factory=dict)
    retried: dict[str, int] = field(default_factory=dict)
    snoozed: dict[str, int] = field(default_factory=dict)

    def get(self, queue: str | None = None, state: str | None = None) -> int:
        """Jobs in `queue` (None: any) and `state` (None: any)."""
        return sum(n for (q, s), n in self.states.items()
                   if queue in (None, q) and state in (None, s))

    def unfinished(self, queue: str | None = None) -> int:
        """Jobs not yet in a terminal state."""
        return sum(n for (q, s), n in self.states.items()
                   if queue in (None, q) and s not in TERMINAL)


async def count_jobs(conn: psycopg.AsyncConnection[Any], prefix: str, first_id: int) -> Counts:
    """Count the demo's jobs from `first_id` on (earlier runs stay in the table)."""
    query = sql.SQL(_COUNT).format(table=sql.Identifier(prefix, "oban_jobs"))
    counts = Counts()
    cur = await conn.execute(query, (first_id, list(WORKER_NAMES)))
    for queue, state, n, retried, snoozed in await cur.fetchall():
        counts.states[(queue, state)] = n
        counts.retried[queue] = counts.retried.get(queue, 0) + retried
        counts.snoozed[queue] = counts.snoozed.get(queue, 0) + snoozed
    return counts


class View(Protocol):
    """Shows progress while the demo runs."""

    def update(self, counts: Counts, elapsed: float) -> None: ...
    def close(self) -> None: ...


class BarsView:
    """Live progress bars, one per queue (for a terminal)."""

    def __init__(self, console: Console, tracks: int) -> None:
        self.progress = Progress(
            TextColumn("{task.description:<11}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("running {task.fields[running]:>3}"),
            TextColumn("retried {task.fields[retried]:>4}"), TimeElapsedColumn(),
            console=console,
        )  # fmt: skip
        self.tasks: dict[str, TaskID] = {
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
        self.console.print(f"[{elapsed:5.1f}s] " + "  ".join(parts) + f"  retried {retried}",
                           highlight=False, soft_wrap=True)

    def close(self) -> None:
        """Nothing to clean up."""


async def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; 0 when every job completed, 1 otherwise, 130 when interrupted."""
    problem = _check_args(args)
    if problem:
        print(f"kerrera demo: error: {problem}", file=sys.stderr)
        return 2
    console = Console()
    stop = asyncio.Event()
    try:
        with _interruptible(stop, console):
            return await _demo(args, console, stop)
    except psycopg.OperationalError as exc:  # a wrong --dsn or a server that is down
        print(f"kerrera demo: error: cannot use the database: {exc}", file=sys.stderr)
        return 2


def _check_args(args: argparse.Namespace) -> str | None:
    if args.tracks < 1:
        return f"--tracks must be at least 1, got {args.tracks}"
    if not 0.0 <= args.fail_rate <= 1.0:
        return f"--fail-rate must be between 0 and 1, got {args.fail_rate}"
    return None


@contextlib.contextmanager
def _interruptible(stop: asyncio.Event, console: Console) -> Iterator[None]:
    """Turn Ctrl-C (and SIGTERM) into `stop`, so the demo drains and still summarises."""
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if not stop.is_set():
            console.print("[yellow]Interrupted: letting running jobs finish...[/]")
        stop.set()

    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # e.g. on Windows
            loop.add_signal_handler(signum, on_signal)
            installed.append(signum)
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


async def _unless_stopped(stop: asyncio.Event, work: Awaitable[T]) -> T | None:
    """Await `work`, or give up on it (returning None) when `stop` is set first."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    return None


async def _demo(args: argparse.Namespace, console: Console, stop: asyncio.Event) -> int:
    app = Kerrera(args.dsn, queues=QUEUES, prefix=args.prefix, data_dir=args.data_dir,
                  stage_interval=0.1, shutdown_grace_period=2.0)
    if _uses_embedded(args):
        where = Path(args.data_dir).expanduser().resolve()
        console.print(f"Starting the embedded PostgreSQL in {where} "
                      "(the first start takes a few seconds)...", highlight=False)
    dsn = await _unless_stopped(stop, asyncio.to_thread(lambda: app.dsn))
    if dsn is None:
        return 130
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        async with app:
            jobs = await _insert(app, args, console)
            first_id = min(job.id for job in jobs if job.id is not None)
            outcome, elapsed = await _watch(conn, args, console, stop, first_id)
        counts = await count_jobs(conn, args.prefix, first_id)  # settled: the node stopped
    _summarise(console, counts, elapsed)
    return _exit_code(outcome, counts, args.tracks, console)


def _uses_embedded(args: argparse.Namespace) -> bool:
    env = os.environ
    return not (args.dsn or env.get("KERRERA_DATABASE_URL") or env.get("DATABASE_URL"))


async def _insert(app: Kerrera, args: argparse.Namespace, console: Console) -> list[Job]:
    console.print(f"Processing {args.tracks} tracks: {STEPS * args.tracks} jobs through "
                  f"{' -> '.join(QUEUES)} (fail rate {args.fail_rate:.0%})",
                  highlight=False, soft_wrap=True)
    return await app.insert_all(
        Download.new({"track": n, "fail_rate": args.fail_rate}) for n in range(args.tracks)
    )


async def _watch(
    conn: psycopg.AsyncConnection[Any], args: argparse.Namespace, console: Console,
    stop: asyncio.Event, first_id: int,
) -> tuple[str, float]:  # fmt: skip
    """Show progress until every job ended ("done"), `stop` ("interrupted") or the time
    limit ("timeout"); return that and the seconds taken."""
    started = time.monotonic()
    limit = 60.0 + 0.12 * args.tracks  # generous: a default run takes well under a minute
    view: View = (BarsView if console.is_terminal else LinesView)(console, args.tracks)
    try:
        while True:
            counts = await count_jobs(conn, args.prefix, first_id)
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
    states = [s.value for s in JobState if counts.get(state=s.value) or s.value == "completed"]
    table = Table(title="kerrera demo", title_justify="left")
    table.add_column("queue")
    for name in [*states, "retried", "snoozed"]:
        table.add_column(name, justify="right")
    for queue in [*QUEUES, None]:
        row = [str(counts.get(queue, s)) for s in states]
        retried, snoozed = _extra(counts.retried, queue), _extra(counts.snoozed, queue)
        table.add_row(queue or "total", *row, str(retried), str(snoozed),
                      end_section=queue == list(QUEUES)[-1])
    console.print(table)
    total, completed = counts.get(), counts.get(state="completed")
    console.print(
        f"{completed} completed of {total} jobs in {elapsed:.1f} s "
        f"({total / max(elapsed, 1e-9):.0f} jobs/s); {_extra(counts.retried, None)} "
        f"retried after a failure, {_extra(counts.snoozed, None)} snoozed.",
        highlight=False, soft_wrap=True,
    )  # fmt: skip


def _extra(per_queue: dict[str, int], queue: str | None) -> int:
    return sum(per_queue.values()) if queue is None else per_queue.get(queue, 0)


def _exit_code(outcome: str, counts: Counts, tracks: int, console: Console) -> int:
    left, queues = counts.unfinished(), ",".join(f"{q}:{n}" for q, n in QUEUES.items())
    if outcome == "interrupted":
        console.print(f"Stopped early: {left} job(s) wait in the table; finish them with "
                      f"`kerrera start -m {demo_workers.__name__} --queues {queues}`",
                      highlight=False, soft_wrap=True)
        return 130
    if outcome == "timeout":
        console.print(f"[red]Gave up waiting: {left} job(s) did not finish in time.[/]")
        return 1
    if counts.get(state="completed") != STEPS * tracks:
        console.print("[red]Some jobs did not complete: see their `errors` column.[/]")
        return 1
    _hints(console)
    return 0


def _hints(console: Console) -> None:
    console.print("\nWhat next?", style="bold")
    for line in (
        f"  Read the workers of this demo: {demo_workers.__file__}",
        "  Run your own: kerrera start --module myapp.workers --queues default:10",
        "  See more retries: kerrera demo --tracks 200 --fail-rate 0.5",
    ):
        console.print(line, highlight=False, soft_wrap=True)
