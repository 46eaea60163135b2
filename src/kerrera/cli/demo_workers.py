"""The workers of `kerrera demo`: a small media pipeline, download -> separate -> analyse.

Each step pretends to work for a few milliseconds, then enqueues the next step. A share
of the steps (`fail_rate` in the job's args) fails on its first attempt with a plausible
error and succeeds on the retry; a few downloads are snoozed as if rate-limited.

They live in an importable module (not in the command's `__main__`) because a job stores
its worker's dotted path, e.g. `kerrera.cli.demo_workers.Download`, and any node that can
import that path can run the job. The end of the module counts the pipeline's jobs for
the demo's progress display; running the jobs does not need it.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from kerrera import Job, JobState, Record, Snooze, Worker, current_app

#: Queues of the pipeline and how many of their jobs run at once on the demo node.
QUEUES: dict[str, int] = {"downloads": 20, "separation": 8, "analysis": 10}

#: Downloads are also snoozed (on the first attempt) at this share of the failure rate.
SNOOZE_SHARE = 0.25


class DemoStep(Worker, abstract=True):
    """Shared by the steps: a short retry delay, since the default (17 s and more) suits
    real outages, not a demo that should finish in seconds."""

    def backoff(self, job: Job) -> float:
        """Retry half a second after a failure."""
        return 0.5


def roll(job: Job, step: str) -> float:
    """A number in [0, 1) fixed for this track and step, so that a run's failures are
    the same every time (and do not depend on which node runs the job)."""
    return random.Random(f"{step}:{job.args['track']}").random()


def fails_now(job: Job, step: str) -> bool:
    """True when this step should fail: on the first attempt only, at the job's rate."""
    return job.attempt == 1 and roll(job, step) < float(job.args.get("fail_rate", 0.0))


def next_args(job: Job) -> dict[str, object]:
    """The args the next step gets: the same track, failure rate and demo run."""
    return {key: job.args[key] for key in ("track", "fail_rate", "run") if key in job.args}


class Download(DemoStep, queue="downloads", max_attempts=3):
    """Fetch the track (async: runs on the event loop, 20 at a time)."""

    async def process(self, job: Job) -> Snooze | None:
        """Download, then enqueue the separation of the track."""
        rate = float(job.args.get("fail_rate", 0.0))
        chance = roll(job, "download")
        if job.attempt == 1 and rate <= chance < rate * (1 + SNOOZE_SHARE):
            return Snooze(0.3)  # the CDN said "slow down": come back soon, no attempt spent
        await asyncio.sleep(random.uniform(0.005, 0.030))
        if fails_now(job, "download"):
            raise ConnectionResetError(
                f"connection reset by cdn-{job.args['track'] % 7}.example.net while "
                f"fetching track-{job.args['track']:05d}.flac"
            )
        await current_app().insert(Separate.new(next_args(job)))
        return None


class Separate(DemoStep, queue="separation", max_attempts=3):
    """Split the track into stems (async, 8 at a time: the scarce resource)."""

    async def process(self, job: Job) -> None:
        """Separate, then enqueue the analysis of the track."""
        await asyncio.sleep(random.uniform(0.005, 0.030))
        if fails_now(job, "separate"):
            raise RuntimeError("CUDA out of memory: tried to allocate 512 MiB for 4 stems")
        await current_app().insert(Analyse.new(next_args(job)))


class Analyse(DemoStep, queue="analysis", max_attempts=3):
    """Measure tempo and key (a plain `def`: Kerrera runs it on its thread pool)."""

    def process(self, job: Job) -> Record:
        """Analyse the stems and keep the result in the job's `meta["return"]`."""
        time.sleep(random.uniform(0.005, 0.030))  # blocking is fine here: it is a thread
        if fails_now(job, "analyse"):
            raise TimeoutError("beat tracker did not converge within 8 s of audio")
        pick = random.Random(f"result:{job.args['track']}")
        keys = ("C", "G", "D", "A", "E", "F", "Bb", "Eb")
        return Record({"bpm": pick.randint(70, 174), "key": f"{pick.choice(keys)} major"})


# -- counting the pipeline's jobs (for the demo's progress; not needed to run them) -----
TERMINAL = frozenset(s.value for s in JobState if s.terminal)

_COUNT = """
SELECT queue, state::text, count(*)::int,
       count(*) FILTER (WHERE cardinality(errors) > 0)::int,
       count(*) FILTER (WHERE meta ? 'snoozed')::int
FROM {table}
WHERE id >= %s AND args->>'run' = %s
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
        return sum(
            n for (q, s), n in self.states.items() if queue in (None, q) and state in (None, s)
        )

    def unfinished(self) -> int:
        """Jobs not yet in a terminal state."""
        return sum(n for (_q, s), n in self.states.items() if s not in TERMINAL)

    @staticmethod
    def tally(per_queue: dict[str, int], queue: str | None = None) -> int:
        """`per_queue` (`retried` or `snoozed`) for `queue`, or for all queues."""
        return sum(per_queue.values()) if queue is None else per_queue.get(queue, 0)


async def count_jobs(
    conn: psycopg.AsyncConnection[Any], prefix: str, run: str, first_id: int
) -> Counts:
    """Count the jobs of demo `run` (its first job is `first_id`: that bound lets the
    primary key skip earlier runs, and `run` leaves out another demo running alongside)."""
    query = sql.SQL(_COUNT).format(table=sql.Identifier(prefix, "oban_jobs"))
    counts = Counts()
    cur = await conn.execute(query, (first_id, run))
    for queue, state, n, retried, snoozed in await cur.fetchall():
        counts.states[(queue, state)] = n
        counts.retried[queue] = counts.retried.get(queue, 0) + retried
        counts.snoozed[queue] = counts.snoozed.get(queue, 0) + snoozed
    return counts


async def count_leftovers(conn: psycopg.AsyncConnection[Any], prefix: str) -> int:
    """Unfinished jobs already in the demo's queues (say, of an interrupted run)."""
    query = sql.SQL(
        "SELECT count(*) FROM {table} WHERE queue = ANY(%s) AND state::text <> ALL(%s)"
    ).format(table=sql.Identifier(prefix, "oban_jobs"))
    cur = await conn.execute(query, (list(QUEUES), sorted(TERMINAL)))
    row = await cur.fetchone()
    return int(row[0]) if row else 0
