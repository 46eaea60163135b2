"""Operations of the testing helpers (`kerrera.testing`, `drain_queue`, inline mode), as
steps that both engines drive (see steps.py). Their SQL lives in `sql/testing.sql`;
outcomes are written with the runtime's own ack (`jobs.ack_jobs`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kerrera.core import codec
from kerrera.core.job import Job, RunningJob
from kerrera.engine.jobs import insert_jobs
from kerrera.engine.steps import Atomic, Query, Route, Steps, one


def enqueued_jobs(
    worker: str | None, queue: str | None, args: dict[str, Any], meta: dict[str, Any],
    tags: Sequence[str], priority: int | None,
) -> Steps[list[Job]]:  # fmt: skip
    """Available or scheduled jobs matching every filter (args, meta and tags by
    containment)."""
    params = {
        "worker": worker, "queue": queue, "priority": priority, "args": codec.dumps(args),
        "meta": codec.dumps(meta), "tags": list(tags),
    }  # fmt: skip
    jobs: list[Job] = yield Query("enqueued_jobs", params)
    return jobs


def claim_jobs(ids: Sequence[int], node: str, producer: str) -> Steps[list[RunningJob]]:
    """Start these jobs now, whatever their schedule, as a fetch would (inline mode)."""
    params = {"ids": list(ids), "node": node, "producer": producer}
    # (rows of jobs now executing, read back from the table: their ids are set)
    claimed: list[RunningJob] = yield Query("claim_jobs", params)
    return claimed


def insert_claimed(
    jobs: Sequence[Job], node: str, producer: str, route: Route
) -> Steps[tuple[list[Job], list[RunningJob]]]:
    """Insert jobs and claim the new ones in one transaction (inline mode), so that no
    node can fetch them in between. Returns (saved, claimed)."""
    done: tuple[list[Job], list[RunningJob]] = yield Atomic(
        _insert_and_claim(jobs, node, producer, route)
    )
    return done


def _insert_and_claim(
    jobs: Sequence[Job], node: str, producer: str, route: Route
) -> Steps[tuple[list[Job], list[RunningJob]]]:
    saved = yield from insert_jobs(jobs, route)
    new = [j.id for j in saved if not j.conflict and j.id is not None]
    claimed = (yield from claim_jobs(new, node, producer)) if new else []
    return saved, claimed


def available_ids(queue: str) -> Steps[list[int]]:
    """The queue's available jobs, in fetch order."""
    rows = yield from one("available_ids", {"queue": queue})
    return [int(row[0]) for row in rows]


def stage_queue_now(queue: str) -> Steps[None]:
    """Make the queue's scheduled and retryable jobs available now, due or not."""
    yield from one("stage_queue_now", {"queue": queue})
