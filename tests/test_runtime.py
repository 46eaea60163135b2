"""Producers: concurrency limits, priorities, scheduling, notifications, queue control."""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import eventually
from support import scripted
from support.scripted import Scripted

from kerrera import JobState


async def _count(sql: Any, state: str) -> int:
    return int(sql("SELECT count(*) FROM oban_jobs WHERE state = %s", (state,))[0][0])


async def test_concurrency_never_exceeds_the_limit(make_app: Any, sql: Any) -> None:
    app = make_app(queues={"default": 3, "other": 1})
    async with app:
        await app.insert_all([Scripted.new({"do": "sleep", "seconds": 0.05}) for _ in range(30)])
        await eventually(lambda: _count(sql, "completed"), timeout=15)
        await eventually(
            lambda: sql("SELECT count(*) = 30 FROM oban_jobs WHERE state = 'completed'")[0][0],
            timeout=15,
        )
    assert scripted.max_concurrency() == 3


async def test_limits_are_per_queue(make_app: Any, sql: Any) -> None:
    app = make_app(queues={"a": 2, "b": 4})
    async with app:
        jobs = [
            Scripted.new({"do": "sleep", "seconds": 0.1}, queue=q)
            for q in ("a", "b")
            for _ in range(8)
        ]
        await app.insert_all(jobs)
        await eventually(
            lambda: sql("SELECT count(*) = 16 FROM oban_jobs WHERE state = 'completed'")[0][0],
            timeout=15,
        )
    assert scripted.max_concurrency() == 6


async def test_higher_priority_runs_first(make_app: Any) -> None:
    app = make_app(queues={"default": 1})
    await app.insert_all([Scripted.new({"p": p}, priority=p) for p in (9, 5, 0, 7, 1)])
    async with app:
        await eventually(lambda: len(scripted.RUNS) == 5)
    assert [r[2]["p"] for r in scripted.RUNS] == [0, 1, 5, 7, 9]


async def test_scheduled_jobs_run_when_due(make_app: Any) -> None:
    app = make_app(queues={"default": 2}, stage_interval=0.1)
    async with app:
        job = await app.insert(Scripted.new({}, schedule_in=0.5))
        assert job.state is JobState.SCHEDULED
        await eventually(lambda: scripted.RUNS, timeout=10)
        ran = await app.get_job(job.id)
    assert ran.attempt == 1
    # Not before it was due, by the database's clock (which set both times).
    assert ran.attempted_at >= ran.scheduled_at


async def test_notification_starts_a_job_without_waiting_for_the_poll(make_app: Any) -> None:
    app = make_app(queues={"default": 2}, poll_interval=60)
    async with app:
        await eventually(lambda: app._notifier.connected)
        # The first fetch has run and found nothing: from now on the queue waits.
        await eventually(lambda: app.producers["default"]._jobs_waiting is False)
        await app.insert(Scripted.new({}))
        # With a 60 s poll, only the insert notification can start it this soon.
        await eventually(lambda: scripted.RUNS, timeout=10)


async def test_pause_resume_and_scale(make_app: Any, sql: Any) -> None:
    app = make_app(queues={"default": 1})
    async with app:
        await app.pause_queue("default")
        await app.insert_all([Scripted.new({"do": "sleep", "seconds": 0.05}) for _ in range(6)])
        await asyncio.sleep(1.5)  # longer than the poll interval: nothing may start
        assert scripted.RUNS == []
        assert app.check_queue("default")["paused"] is True
        await app.scale_queue("default", 3)
        await app.resume_queue("default")
        await eventually(
            lambda: sql("SELECT count(*) = 6 FROM oban_jobs WHERE state = 'completed'")[0][0]
        )
        check = app.check_queue("default")
    assert check["started"] is True
    assert check["limit"] == 3 and check["paused"] is False
    assert check["running"] == 0 and check["running_ids"] == []
    assert scripted.max_concurrency() == 3


async def test_cancelling_an_executing_job_stops_it(make_app: Any) -> None:
    app = make_app(queues={"default": 2})
    async with app:
        job = await app.insert(Scripted.new({"do": "block", "key": "forever"}))
        await eventually(lambda: job.id in app.check_queue("default")["running_ids"])
        cancelled = await app.cancel_job(job.id)
        assert cancelled.state is JobState.CANCELLED
        await eventually(lambda: app.check_queue("default")["running"] == 0)
        assert (await app.get_job(job.id)).state is JobState.CANCELLED


async def test_jobs_from_a_lost_fetch_reply_are_reclaimed(make_app: Any, sql: Any) -> None:
    app = make_app(queues={"default": 1})
    async with app:
        producer = app.producers["default"]
        await app.pause_queue("default")
        job = await app.insert(Scripted.new({}))
        # What a fetch that committed but whose reply was lost leaves behind:
        sql(
            "UPDATE oban_jobs SET state = 'executing', attempt = 1, "
            "attempted_by = ARRAY[%s, %s] WHERE id = %s",
            (app.node, producer.uuid, job.id),
        )
        producer._failures = 1  # the producer saw that fetch fail
        await app.resume_queue("default")
        await eventually(lambda: _state_is(app, job.id, JobState.COMPLETED))
    done = await make_app().get_job(job.id)
    # The lost fetch did not spend an attempt: it was given back with max_attempts + 1.
    assert (done.attempt, done.max_attempts) == (2, job.max_attempts + 1)
    assert [r[0] for r in scripted.RUNS] == [job.id]


async def test_retry_cancel_delete(make_app: Any) -> None:
    app = make_app(queues={"default": 2}, stage_interval=0.1)
    async with app:
        job = await app.insert(Scripted.new({"do": "error"}, max_attempts=1))
        await eventually(lambda: _state_is(app, job.id, JobState.DISCARDED))
        retried = await app.retry_job(job.id)
        assert retried.state is JobState.AVAILABLE and retried.max_attempts == 2
        await eventually(lambda: _state_is(app, job.id, JobState.DISCARDED))
        later = await app.insert(Scripted.new({}, schedule_in=3600))
        assert (await app.cancel_job([later.id]))[0].state is JobState.CANCELLED
        assert await app.cancel_job(later.id) is None  # already finished: nothing to do
        deleted = await app.delete_job([job.id, later.id])
        assert sorted(j.id for j in deleted) == sorted([job.id, later.id])
        assert await app.get_job(job.id) is None


async def _state_is(app: Any, job_id: int, state: JobState) -> bool:
    job = await app.get_job(job_id)
    return job is not None and job.state is state


async def test_stop_puts_unfinished_jobs_back_without_spending_an_attempt(
    make_app: Any,
) -> None:
    app = make_app(queues={"default": 2})
    await app.start()
    job = await app.insert(Scripted.new({"do": "block", "key": "never"}))
    await eventually(lambda: job.id in app.check_queue("default")["running_ids"])
    released = await app.stop(grace=0.2)
    assert released == 1
    checker = make_app()
    back = await checker.get_job(job.id)
    assert back.state is JobState.AVAILABLE
    # Not spent: attempt counts the run, max_attempts gives it back (as a snooze does).
    assert (back.attempt, back.max_attempts) == (1, job.max_attempts + 1)


async def test_stop_waits_for_jobs_within_the_grace_period(make_app: Any) -> None:
    app = make_app(queues={"default": 2})
    await app.start()
    job = await app.insert(Scripted.new({"do": "sleep", "seconds": 0.3}))
    await eventually(lambda: job.id in app.check_queue("default")["running_ids"])
    assert await app.stop(grace=5) == 0
    checker = make_app()
    assert (await checker.get_job(job.id)).state is JobState.COMPLETED
