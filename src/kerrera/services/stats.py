"""Job statistics for the dashboard's charts, gathered as jobs finish (every node).

Each node counts its own finished jobs from telemetry `job.stop` events, in memory, per
minute, queue and worker: outcomes, and histograms of execution and queue time. Every
`interval` seconds it adds what it holds to `kerrera_job_stats` in one statement (an
upsert: nodes writing the same bucket add up), at each stored resolution and grouping
(see migrations/web.py). So the charts never scan `oban_jobs`,
and a job's own acknowledgement carries no extra write. Rows older than `retention`
are deleted now and then.

What a node held when it died unflushed (at most `interval` seconds of jobs) is lost:
these are charts, not accounts.

Example (what `Kerrera(stats_interval=5.0)` does on each node it starts):
    stats = JobStats(engine, "node-1", interval=5.0)
    stats.start()
    ...
    await stats.stop()  # flushes what it holds
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from bisect import bisect_right
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from kerrera import telemetry
from kerrera.engine.dashboard import StatsStore
from kerrera.engine.migrations.web import BOUNDS_MS, BUCKETS, SPANS
from kerrera.engine.postgres import PostgresEngine
from kerrera.services.every import Background, run_every

log = logging.getLogger("kerrera.stats")

#: `job.stop` states -> the counter they add to.
_OUTCOMES = {
    "completed": "completed",
    "retryable": "failed",
    "discarded": "failed",
    "cancelled": "cancelled",
}
#: Most (minute, queue, worker) keys held while the database is unreachable; beyond it
#: the oldest minutes are dropped (a node must not grow without bound during an outage).
MAX_KEYS = 50_000
_ids = itertools.count(1)


class _Entry:
    __slots__ = ("cancelled", "completed", "exec_hist", "failed", "other", "queue_hist")

    def __init__(self) -> None:
        self.completed = self.failed = self.cancelled = self.other = 0
        self.exec_hist = [0] * BUCKETS
        self.queue_hist = [0] * BUCKETS

    def merge(self, other: _Entry) -> None:
        self.completed += other.completed
        self.failed += other.failed
        self.cancelled += other.cancelled
        self.other += other.other
        self.exec_hist = [a + b for a, b in zip(self.exec_hist, other.exec_hist, strict=True)]
        self.queue_hist = [a + b for a, b in zip(self.queue_hist, other.queue_hist, strict=True)]


class JobStats(Background):
    """Counts this node's finished jobs and flushes them every `interval` seconds.

    Options: `interval` (seconds between flushes, default 5), `retention` (how long
    rows are kept, default 2 days: the longest chart is 24 hours)."""

    task_name = "kerrera-stats"

    def __init__(
        self,
        engine: PostgresEngine,
        node: str,
        *,
        interval: float = 5.0,
        retention: timedelta = timedelta(days=2),
    ) -> None:
        self.store = StatsStore(engine.pool, engine.sql.prefix)
        self.node = node
        self.interval = interval
        self.retention = retention
        self._held: dict[tuple[int, str, str], _Entry] = {}
        # job.stop may come from a sync worker's thread as well as from the loop.
        self._lock = threading.Lock()
        self._handler = f"kerrera-stats-{node}-{next(_ids)}"
        self._pruned_at = 0.0
        self._disabled = False

    def start(self) -> None:
        """Listen to `job.stop` and begin flushing."""
        telemetry.attach(self._handler, ["job.stop"], self.record)
        super().start()

    async def stop(self) -> None:
        """Stop listening, end the loop and flush what is held (once, bounded by the
        caller)."""
        telemetry.detach(self._handler)
        await super().stop()
        try:
            await self.flush()
        except Exception as exc:  # stopping must go on
            log.warning("could not write the last job statistics (%s)", exc)

    def record(self, event: str, measurements: dict[str, Any], metadata: dict[str, Any]) -> None:
        """The `job.stop` handler: add one finished job (of this node) to its minute."""
        if self._disabled or metadata.get("node") != self.node:
            return  # another app in this process counts its own jobs
        minute = int(time.time() // 60 * 60)
        key = (minute, str(metadata.get("queue", "")), str(metadata.get("worker", "")))
        exec_ms = float(measurements.get("duration") or 0.0) * 1000
        queue_ms = max(0.0, float(measurements.get("queue_time") or 0.0) * 1000)
        outcome = _OUTCOMES.get(str(metadata.get("state")), "other")
        with self._lock:
            entry = self._held.get(key)
            if entry is None:
                entry = self._held[key] = _Entry()
            setattr(entry, outcome, getattr(entry, outcome) + 1)
            entry.exec_hist[_bucket(exec_ms)] += 1
            entry.queue_hist[_bucket(queue_ms)] += 1

    async def flush(self) -> int:
        """Write what is held in one statement; return how many rows it wrote. On a
        failure the rows are kept for the next flush."""
        with self._lock:
            held, self._held = self._held, {}
        if not held or self._disabled:
            return 0
        rows = [_row(key, entry) for key, entry in sorted(_rollups(held).items())]
        try:
            await self.store.write(rows)
        except psycopg.errors.UndefinedTable:
            self._disabled = True
            log.warning("kerrera_job_stats is missing (migrate to version 8): no job stats")
            return 0
        except Exception:
            self._restore(held)
            raise
        return len(rows)

    def _restore(self, held: dict[tuple[int, str, str], _Entry]) -> None:
        with self._lock:
            for key, entry in held.items():
                mine = self._held.get(key)
                if mine is None:
                    self._held[key] = entry
                else:
                    mine.merge(entry)
            if len(self._held) > MAX_KEYS:
                dropped = sorted(self._held)[: len(self._held) - MAX_KEYS]
                for key in dropped:
                    del self._held[key]
                log.warning("dropped %d unwritten job statistics rows", len(dropped))

    async def _run(self) -> None:
        await run_every(self.interval, self._tick, log, "writing job statistics", first_now=False)

    async def _tick(self) -> None:
        await self.flush()
        now = time.monotonic()
        if now - self._pruned_at > 3600 and not self._disabled:
            self._pruned_at = now
            await self.store.prune(_utc_now() - self.retention)


def _bucket(ms: float) -> int:
    return min(bisect_right(BOUNDS_MS, ms), BUCKETS - 1)


def _rollups(held: dict[tuple[int, str, str], _Entry]) -> dict[tuple[int, int, str, str], _Entry]:
    """Each minute's entries at every stored resolution and grouping: per queue and
    worker, per queue (worker ''), and all (queue and worker ''), summed here so that
    a chart reads one row per point and series."""
    out: dict[tuple[int, int, str, str], _Entry] = {}
    for (minute, queue, worker), entry in held.items():
        for span in SPANS:
            bucket = minute // span * span
            for key in ((queue, worker), (queue, ""), ("", "")):
                total = out.get((span, bucket, *key))
                if total is None:
                    total = out[(span, bucket, *key)] = _Entry()
                total.merge(entry)
    return out


def _row(key: tuple[int, int, str, str], entry: _Entry) -> dict[str, Any]:
    span, start, queue, worker = key
    return {
        "span": span,
        "bucket": datetime.fromtimestamp(start, UTC).replace(tzinfo=None).isoformat(),
        "queue": queue, "worker": worker, "completed": entry.completed,
        "failed": entry.failed, "cancelled": entry.cancelled, "other": entry.other,
        "exec_hist": entry.exec_hist, "queue_hist": entry.queue_hist,
    }  # fmt: skip


def _utc_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
