"""`kerrera top`: a live view of queues, throughput and running jobs with their progress."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from rich.console import Group
from rich.live import Live
from rich.text import Text

from kerrera.cli._render import Cell, Output, cut, fit, rich_table, shorten_worker
from kerrera.cli._signals import on_interrupt
from kerrera.cli.queues import queue_report
from kerrera.core.errors import ConfigError
from kerrera.core.job import Job

if TYPE_CHECKING:
    from kerrera.app.facade import Kerrera

T = TypeVar("T")
#: Jobs per second per queue: (completed, failed).
Rates = dict[str, tuple[float, float]]

#: Producer outcomes counted as failures (`counts` in the heartbeats).
FAILED = ("retryable", "discarded")
# Short headings: the table fits 80 columns with queue names of up to 14 characters.
HEAD = (
    "QUEUE", "NODES", "LIMIT", "RUNNING", "AVAIL", "SCHED", "RETRY", "PAUSED", "DONE/S",
    "FAILED/S",
)  # fmt: skip
#: Too wide: long queue names give way.
SQUEEZE = [(0, cut, 8)]
NUMBERS = frozenset({1, 2, 3, 4, 5, 6, 8, 9})
#: The running jobs' table, under the queues'.
JOB_HEAD = ("ID", "QUEUE", "WORKER", "RUN", "FOR", "PROGRESS")
#: Too wide: the progress message gives way first, then the worker's module path.
JOB_SQUEEZE = [(5, cut, 12), (2, shorten_worker, 0), (1, cut, 8), (5, cut, 4)]
#: One refresh: the queue report, the rates (None without a baseline), running jobs.
Snapshot = tuple[list[dict[str, Any]], "Rates | None", list[Job]]


def add_parser(sub: Any, common: Any) -> None:
    """Register `kerrera top`."""
    parser = sub.add_parser("top", help="a live view of queues, throughput and running jobs")
    common(parser)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (1)")
    parser.add_argument(
        "--once",
        action="store_true",
        help="print one snapshot (throughput measured over one interval) and exit",
    )
    parser.add_argument("--iterations", type=int, metavar="N", help="exit after N refreshes")
    parser.add_argument(
        "--jobs", type=int, default=10, metavar="N",
        help="show up to N running jobs with their progress (10; 0: none)",
    )  # fmt: skip


@dataclass
class Throughput:
    """Jobs per second per queue, from the deltas of the producers' cumulative outcome
    counters between two reports. A producer seen for the first time counts from zero
    only if it started after the previous report (otherwise its totals span unknown
    time); one that vanished is dropped, and a counter that went down (a restart under
    the same id) counts from zero, so rates are never negative."""

    _seen: dict[str, dict[str, int]] = field(default_factory=dict)
    _at: float | None = None
    _db_at: datetime | None = None

    def update(self, rows: list[dict[str, Any]], now: float) -> Rates | None:
        """(completed/s, failed/s) per queue since the previous update (None the first
        time: there is no baseline yet)."""
        previous, elapsed, since = self._seen, None, self._db_at
        if self._at is not None:
            elapsed = now - self._at
        self._seen, self._at = {}, now
        totals: dict[str, list[int]] = {}
        for row in rows:
            if row.get("uuid") is None:
                continue
            counts = {k: v for k, v in (row.get("counts") or {}).items() if isinstance(v, int)}
            self._seen[row["uuid"]] = counts
            before = previous.get(row["uuid"])
            if before is None and not _started_after(row, since):
                continue
            sums = totals.setdefault(row["queue"], [0, 0])
            sums[0] += _delta(counts, before or {}, ("completed",))
            sums[1] += _delta(counts, before or {}, FAILED)
        stamps = [r["updated_at"] for r in rows if r.get("updated_at") is not None]
        self._db_at = max(stamps, default=since)
        if elapsed is None:
            return None
        if elapsed <= 0:
            return {}
        return {q: (done / elapsed, failed / elapsed) for q, (done, failed) in totals.items()}


def _started_after(row: dict[str, Any], since: datetime | None) -> bool:
    started = row.get("started_at")
    return isinstance(started, datetime) and since is not None and started > since


def _delta(now: dict[str, int], before: dict[str, int], keys: tuple[str, ...]) -> int:
    total = 0
    for key in keys:
        a, b = now.get(key, 0), before.get(key, 0)
        total += a - b if a >= b else a
    return total


def summarise(report: list[dict[str, Any]], rates: Rates | None) -> list[list[Cell]]:
    """One row per queue: its nodes' limits and running jobs summed, its waiting jobs,
    how many of its nodes are paused, and its rates ('-' before there is a baseline)."""
    by_queue: dict[str, list[dict[str, Any]]] = {}
    for row in report:
        by_queue.setdefault(row["queue"], []).append(row)
    rows: list[list[Cell]] = []
    for queue, group in sorted(by_queue.items()):
        nodes = [r for r in group if r["node"] is not None]
        paused = sum(1 for r in nodes if r.get("paused"))
        flag: Cell = (
            ("-", "") if not nodes else ("no", "") if not paused
            else ("yes", "yellow") if paused == len(nodes) else (f"{paused}/{len(nodes)}", "yellow")
        )  # fmt: skip
        done, failed = (rates or {}).get(queue, (0.0, 0.0))
        first = group[0]
        rows.append([
            queue, str(len(nodes)), _total(nodes, "limit"), _total(nodes, "running"),
            (str(first.get("available", 0)), "bold" if first.get("available") else ""),
            str(first.get("scheduled", 0)), str(first.get("retryable", 0)), flag,
            ("-", "") if rates is None else (f"{done:.1f}", "green" if done else ""),
            ("-", "") if rates is None else (f"{failed:.1f}", "red" if failed else ""),
        ])  # fmt: skip
    return rows


def _many(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _total(nodes: list[dict[str, Any]], key: str) -> str:
    return str(sum(r.get(key) or 0 for r in nodes)) if nodes else "-"


def headline(report: list[dict[str, Any]], rates: Rates | None) -> str:
    """The line above the table: time, nodes, queues and the total rates."""
    nodes = {r["node"] for r in report if r["node"] is not None}
    queues = {r["queue"] for r in report}
    stamp = datetime.now(UTC).strftime("%H:%M:%S UTC")
    line = f"kerrera top  {stamp}  {_many(len(nodes), 'node')}, {_many(len(queues), 'queue')}"
    if rates is not None:  # (the line fits 80 columns up to 99,999 jobs/s)
        done = sum(r[0] for r in rates.values())
        failed = sum(r[1] for r in rates.values())
        line += f"  {done:.1f} jobs/s done, {failed:.1f} failed"
    return line


async def run(args: argparse.Namespace) -> int:
    """Carry out `kerrera top`; 0 also when interrupted with Ctrl-C."""
    from kerrera.app.facade import Kerrera

    if not args.interval > 0:
        raise ConfigError(f"option '--interval' must be > 0 seconds, got {args.interval}")
    if args.iterations is not None and args.iterations < 1:
        raise ConfigError(f"option '--iterations' must be >= 1, got {args.iterations}")
    if not 0 <= args.jobs <= 1000:
        raise ConfigError(f"option '--jobs' must be from 0 to 1000, got {args.jobs}")
    stop = asyncio.Event()
    with on_interrupt(stop.set):  # Ctrl-C or SIGTERM: the view ends cleanly, exit 0
        # Never migrate from here: a mistyped --prefix should fail, not create a schema.
        app = Kerrera(args.dsn, prefix=args.prefix, data_dir=args.data_dir, migrate=False)
        try:
            await _watch(app, args, Output(), stop)
        finally:
            await app.stop()
    return 0


async def _watch(app: Kerrera, args: argparse.Namespace, out: Output, stop: asyncio.Event) -> None:
    meter = Throughput()
    # Nodes answer a report request within milliseconds; a dead node's row must not hold
    # every refresh up for long.
    fresh = min(0.5, args.interval / 2)

    async def sample() -> Snapshot:
        report = await queue_report(app, fresh=fresh)
        running = await app.list_jobs(state="executing", limit=args.jobs) if args.jobs else []
        return report, meter.update(report, time.monotonic()), running

    first = await _unless(stop, sample())
    if first is None:
        return
    if args.once:  # a rate needs two reports
        if await _sleep(stop, args.interval):
            return
        second = await _unless(stop, sample())
        if second is not None:
            _print(out, *second)
        return
    live = Live(console=out.console, auto_refresh=False) if out.console is not None else None
    shown = 0
    with live if live is not None else contextlib.nullcontext():
        snapshot = first
        while True:
            if live is not None:
                live.update(_frame(out.width, *snapshot), refresh=True)
            else:
                _print(out, *snapshot)
            shown += 1
            if args.iterations is not None and shown >= args.iterations:
                return
            if await _sleep(stop, args.interval):
                return
            got = await _unless(stop, sample())
            if got is None:
                return
            snapshot = got


def _frame(
    width: int, report: list[dict[str, Any]], rates: Rates | None, running: list[Job]
) -> Group:
    queues = fit(HEAD, summarise(report, rates), width, SQUEEZE)
    parts: list[Any] = [
        Text(headline(report, rates), style="bold"),
        rich_table(HEAD, queues, right=NUMBERS),
    ]
    if running:
        rows = fit(JOB_HEAD, job_rows(running), width, JOB_SQUEEZE)
        parts += [Text(f"running jobs ({len(running)} newest)", style="bold"),
                  rich_table(JOB_HEAD, rows, right={0, 3, 4})]  # fmt: skip
    parts.append(Text("Ctrl-C to quit", style="dim"))
    return Group(*parts)


def _print(
    out: Output, report: list[dict[str, Any]], rates: Rates | None, running: list[Job]
) -> None:
    out.line(headline(report, rates), style="bold")
    out.table(HEAD, summarise(report, rates), right=NUMBERS, squeeze=SQUEEZE)
    if running:
        out.line()
        out.line(f"running jobs ({len(running)} newest)", style="bold")
        out.table(JOB_HEAD, job_rows(running), right={0, 3, 4}, squeeze=JOB_SQUEEZE)
    out.line()
    out.stream.flush()


def job_rows(running: list[Job], now: datetime | None = None) -> list[list[Cell]]:
    """One row per running job: id, queue, worker, run number, how long it has run,
    and its latest progress (`42% encoding`, '-' before any report)."""
    now = now or datetime.now(UTC).replace(tzinfo=None)
    return [
        [str(job.id), job.queue, job.worker, str(job.attempt),
         _took(now - job.attempted_at) if job.attempted_at else "-", progress_text(job)]
        for job in running
    ]  # fmt: skip


def progress_text(job: Job) -> str:
    """A job's last progress report in a few words: `42% encoding stems`."""
    entry = job.meta.get("progress") if isinstance(job.meta, dict) else None
    if not isinstance(entry, dict):
        return "-"
    percent, message = entry.get("percent"), entry.get("message")
    words = [f"{percent:.0f}%" if isinstance(percent, int | float) else "", str(message or "")]
    return " ".join(w for w in words if w) or "-"


def _took(elapsed: timedelta) -> str:
    seconds = max(int(elapsed.total_seconds()), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


async def _sleep(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds`; True if asked to stop meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


async def _unless(stop: asyncio.Event, step: Awaitable[T]) -> T | None:
    """`step`'s result, or None if asked to stop first (a slow database must not make
    Ctrl-C wait)."""
    task = asyncio.ensure_future(step)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return None
