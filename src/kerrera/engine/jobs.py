"""Job operations, written once for both engines as steps (see steps.py): inserting,
acking and releasing, completing on a caller's connection, and reading, retrying,
cancelling and deleting jobs by id. (The fetch, the hot path, is `PostgresEngine.
fetch_jobs`: one statement, `ack_and_fetch`, whose parameters `ack_params` builds.)"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from psycopg.errors import UniqueViolation
from psycopg.rows import tuple_row

from kerrera.core.job import Job
from kerrera.engine.base import AckBatch
from kerrera.engine.statements import (
    ack_params,
    copied_jobs,
    copy_rows,
    flagged_job_row,
    insert_messages,
    insert_params,
    pkill_message,
    queue_messages,
    saved_jobs,
    split_due,
)
from kerrera.engine.steps import Atomic, CopyIn, HandOver, Query, Route, Steps
from kerrera.engine.unique import insert_unique

#: Jobs per insert statement: large enough to amortise the round trip, small enough
#: that one JSON parameter stays a few megabytes.
INSERT_BATCH = 5000
#: From this many jobs due now, a batch goes through COPY (three round trips, but about
#: twice the rows per second of INSERT ... RETURNING); below it, one INSERT statement.
COPY_FROM = 200
#: A retry that collides with a unique insert committing at the same moment is run
#: again (it then sees the new holder and gives its key up); this many times at most.
UNIQUE_RACE_ATTEMPTS = 3


def insert_jobs(jobs: Sequence[Job], route: Route) -> Steps[list[Job]]:
    """Insert `jobs`; return them saved, in their order. Unique jobs go first (their
    own statements, see unique.py), then jobs due now (by COPY from `COPY_FROM` in a
    batch, else one INSERT), then scheduled ones; `INSERT_BATCH` jobs per statement."""
    saved: dict[int, Job] = {}
    now, later, unique = split_due(jobs)
    if unique:
        made = yield from insert_unique([jobs[i] for i in unique], route.param)
        saved.update(zip(unique, made, strict=True))
    for chunk in _batches(now):
        batch = [jobs[i] for i in chunk]
        made = yield from (
            _copy(batch, route) if len(batch) >= COPY_FROM else _insert(batch, route)
        )
        saved.update(zip(chunk, made, strict=True))
    for chunk in _batches(later):
        made = yield from _insert([jobs[i] for i in chunk], route)
        saved.update(zip(chunk, made, strict=True))
    out = [saved[i] for i in range(len(jobs))]
    if not route.in_statement:
        yield HandOver(route.channel, insert_messages(out))
    return out


def _batches(positions: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(positions), INSERT_BATCH):
        yield positions[start : start + INSERT_BATCH]


def _insert(jobs: list[Job], route: Route) -> Steps[list[Job]]:
    """One INSERT statement; only the columns the database decided are read back."""
    # (tuple rows: a caller's connection may have any row factory)
    rows = yield Query("insert_jobs", insert_params(jobs, route.param), tuple_row)
    return saved_jobs(jobs, rows)


def _copy(jobs: list[Job], route: Route) -> Steps[list[Job]]:
    """COPY in one transaction: draw the ids and the timestamp the defaults use, copy
    the rows, notify; nothing is read back."""
    saved: list[Job] = yield Atomic(_copy_steps(jobs, route))
    return saved


def _copy_steps(jobs: list[Job], route: Route) -> Steps[list[Job]]:
    rows = yield Query("reserve_ids", {"n": len(jobs)}, tuple_row)
    ids_text, at = rows[0]
    ids = [int(i) for i in ids_text.split(",")]
    yield CopyIn("copy_jobs", copy_rows(ids, jobs))
    if route.in_statement:  # (else `insert_jobs` hands the wake-ups over)
        queues = sorted({j.queue for j in jobs})
        yield Query("notify_queues", {"channel": route.channel, "queues": queues}, tuple_row)
    return copied_jobs(ids, at, jobs)


def ack_jobs(acks: AckBatch, route: Route) -> Steps[None]:
    """Write `acks` without fetching: put the released jobs back, then write the
    outcomes (`ack_and_fetch` with no demand)."""
    if acks.released_ids:
        yield from release_jobs(acks, route)
    if acks.done_ids or acks.outcomes:
        yield Query("ack_and_fetch", ack_params(acks))


def release_jobs(acks: AckBatch, route: Route) -> Steps[None]:
    """Put the jobs `acks` releases (interrupted by shutdown) back to available, their
    attempt not spent, and take them out of `acks`."""
    params = {
        "ids": acks.released_ids, "attempts": acks.released_attempts,
        "owner": acks.producer, "channel": route.param,
    }  # fmt: skip
    rows = yield Query("release_jobs", params, tuple_row)
    acks.released_ids, acks.released_attempts = [], []
    if rows and not route.in_statement:
        yield HandOver(route.channel, queue_messages(row[1] for row in rows))


def complete_job(job_id: int, attempt: int, owner: str | None) -> Steps[bool]:
    """Complete a running attempt (fetched by producer `owner`); False if it lost it."""
    params = {"id": job_id, "attempt": attempt, "owner": owner}
    rows = yield Query("complete_job", params, tuple_row)
    return bool(rows)


def get_jobs(ids: Sequence[int]) -> Steps[list[Job]]:
    """The jobs with these ids, by id."""
    jobs: list[Job] = yield Query("get_jobs", {"ids": list(ids)})
    return jobs


def retry_jobs(ids: Sequence[int], route: Route, *, repeatable: bool) -> Steps[list[Job]]:
    """Make jobs that are not running available again. A collision with a unique
    insert committing meanwhile runs the statement again (it then sees the new
    holder), unless the statement is not `repeatable` (a caller's transaction, which
    the collision aborted: only the caller can decide)."""
    params = {"ids": list(ids), "channel": route.param}
    retried: list[Job] = []
    for attempt in range(1, UNIQUE_RACE_ATTEMPTS + 1):
        try:
            retried = yield Query("retry_jobs", params)
            break
        except UniqueViolation:
            if not repeatable or attempt == UNIQUE_RACE_ATTEMPTS:
                raise
    if not route.in_statement:
        yield HandOver(route.channel, insert_messages(retried))
    return retried


def cancel_jobs(ids: Sequence[int], route: Route) -> Steps[list[Job]]:
    """Cancel unfinished jobs; the running ones are signalled to stop (`route`: the
    signal channel)."""
    params = {"ids": list(ids), "signal": route.param}
    rows: list[Any] = yield Query("cancel_jobs", params, flagged_job_row)
    if not route.in_statement:
        yield HandOver(route.channel, [pkill_message(job.id) for job, live in rows if live])
    return [job for job, _live in rows]


def delete_jobs(ids: Sequence[int]) -> Steps[list[Job]]:
    """Delete jobs that are not running."""
    jobs: list[Job] = yield Query("delete_jobs", {"ids": list(ids)})
    return jobs
