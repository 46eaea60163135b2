"""Every way a job can end, observed in the database."""

from __future__ import annotations

from typing import Any

from conftest import eventually
from support import scripted
from support.scripted import Scripted, Slow, sync_job

from kerrera import JobState


async def _finish(app: Any, job_id: int, states: set[JobState]) -> Any:
    async def done() -> Any:
        job = await app.get_job(job_id)
        return job if job and job.state in states else None

    return await eventually(done)


TERMINAL = {JobState.COMPLETED, JobState.CANCELLED, JobState.DISCARDED}


async def test_returning_normally_completes(make_app: Any) -> None:
    app = make_app(queues={"default": 2})
    async with app:
        job = await app.insert(Scripted.new({"do": "ok"}))
        done = await _finish(app, job.id, TERMINAL)
    assert done.state is JobState.COMPLETED
    assert done.attempt == 1 and done.errors == []
    assert done.completed_at is not None and done.attempted_at is not None
    assert done.attempted_by[0] == app.node


async def test_record_keeps_value_in_meta(make_app: Any) -> None:
    app = make_app(queues={"default": 2})
    async with app:
        job = await app.insert(Scripted.new({"do": "record", "value": {"stems": 4}}))
        done = await _finish(app, job.id, TERMINAL)
    assert done.state is JobState.COMPLETED
    assert done.meta["return"] == {"stems": 4}


async def test_snooze_reschedules_without_spending_an_attempt(make_app: Any) -> None:
    app = make_app(queues={"default": 2}, stage_interval=0.1)
    async with app:
        job = await app.insert(Scripted.new({"do": "snooze", "seconds": 0.2}))
        done = await _finish(app, job.id, TERMINAL)
    assert done.state is JobState.COMPLETED
    runs = [r for r in scripted.RUNS if r[0] == job.id]
    assert len(runs) == 2
    # Oban OSS's convention: attempt counts runs, max_attempts grows by one per snooze.
    assert done.attempt == 2 and done.max_attempts == job.max_attempts + 1
    assert done.meta["snoozed"] == 1 and done.errors == []


async def test_cancel_ends_cancelled_with_reason(make_app: Any) -> None:
    app = make_app(queues={"default": 2})
    async with app:
        job = await app.insert(Scripted.new({"do": "cancel", "reason": "account gone"}))
        done = await _finish(app, job.id, TERMINAL)
    assert done.state is JobState.CANCELLED and done.cancelled_at is not None
    assert "account gone" in done.errors[-1]["error"]


async def test_error_is_retried_with_backoff_then_succeeds(make_app: Any) -> None:
    app = make_app(queues={"default": 2}, stage_interval=0.1)
    async with app:
        job = await app.insert(Scripted.new({"do": "fail_until", "times": 3}))
        done = await _finish(app, job.id, TERMINAL)
    assert done.state is JobState.COMPLETED and done.attempt == 3
    assert [e["attempt"] for e in done.errors] == [1, 2]
    assert "ValueError: failing attempt 1" in done.errors[0]["error"]
    assert "Traceback (most recent call last)" in done.errors[0]["error"]
    assert done.errors[0]["at"].endswith("Z")


async def test_error_on_last_attempt_discards(make_app: Any) -> None:
    app = make_app(queues={"default": 2}, stage_interval=0.1)
    async with app:
        job = await app.insert(Scripted.new({"do": "error"}, max_attempts=2))
        done = await _finish(app, job.id, TERMINAL)
    assert done.state is JobState.DISCARDED and done.discarded_at is not None
    assert done.attempt == 2 and len(done.errors) == 2


async def test_retryable_waits_for_the_backoff(make_app: Any, sql: Any) -> None:
    app = make_app(queues={"default": 2})
    async with app:
        job = await app.insert(Scripted.new({"do": "error"}, max_attempts=5))

        async def retryable() -> Any:
            found = await app.get_job(job.id)
            return found if found.state is JobState.RETRYABLE else None

        found = await eventually(retryable)
    (delay,) = sql(
        "SELECT extract(epoch FROM scheduled_at - attempted_at) FROM oban_jobs WHERE id = %s",
        (job.id,),
    )[0]
    # Scripted.backoff says 0.1 s, counted from the failure (so at least 0.1 s after the
    # attempt began); the default backoff would be 17 s.
    assert 0.1 <= float(delay) < 10
    assert found.attempt == 1


async def test_timeout_is_an_error(make_app: Any) -> None:
    app = make_app(queues={"default": 2}, stage_interval=0.1)
    async with app:
        job = await app.insert(Slow.new({"seconds": 5}))
        done = await _finish(app, job.id, TERMINAL)
    assert done.state is JobState.DISCARDED and done.attempt == 2
    assert "JobTimeoutError" in done.errors[0]["error"]
    assert "timeout of 0.2s" in done.errors[0]["error"]


async def test_worker_raising_systemexit_does_not_stop_the_node(make_app: Any) -> None:
    app = make_app(queues={"default": 2})
    async with app:
        bad = await app.insert(Scripted.new({"do": "exit"}, max_attempts=1))
        done = await _finish(app, bad.id, TERMINAL)
        good = await app.insert(Scripted.new({"do": "ok"}))
        assert (await _finish(app, good.id, TERMINAL)).state is JobState.COMPLETED
    assert done.state is JobState.DISCARDED and "SystemExit" in done.errors[0]["error"]


async def test_sync_worker_runs_in_a_thread(make_app: Any) -> None:
    app = make_app(queues={"default": 2}, stage_interval=0.1)
    async with app:
        ok = await app.insert(sync_job.new({}))
        bad = await app.insert(sync_job.new({"do": "error"}, max_attempts=1))
        ok_done = await _finish(app, ok.id, TERMINAL)
        bad_done = await _finish(app, bad.id, TERMINAL)
    assert ok_done.state is JobState.COMPLETED
    assert ok_done.meta["return"]["thread"].startswith("kerrera-sync")
    assert bad_done.state is JobState.DISCARDED and "KeyError" in bad_done.errors[0]["error"]


async def test_unknown_worker_is_an_error_on_the_job(make_app: Any) -> None:
    from kerrera import Job

    app = make_app(queues={"default": 2}, stage_interval=0.1)
    async with app:
        ghost = await app.insert(Job(worker="no_such_module.Ghost", max_attempts=2))
        missing_attr = await app.insert(Job(worker="support.scripted.Nope", max_attempts=1))
        after = await app.insert(Scripted.new({"do": "ok"}))
        first = await _finish(app, ghost.id, {JobState.RETRYABLE})
        await app.retry_job(ghost.id)  # skip the default 17 s backoff
        ghost_done = await _finish(app, ghost.id, TERMINAL)
        attr_done = await _finish(app, missing_attr.id, TERMINAL)
        after_done = await _finish(app, after.id, TERMINAL)
    assert first.attempt == 1
    assert ghost_done.state is JobState.DISCARDED and ghost_done.attempt == 2
    assert "unknown worker 'no_such_module.Ghost'" in ghost_done.errors[0]["error"]
    assert attr_done.state is JobState.DISCARDED
    assert "has no worker Nope" in attr_done.errors[0]["error"]
    assert after_done.state is JobState.COMPLETED


async def test_completing_inside_the_workers_transaction(make_app: Any, sql: Any) -> None:
    from support.scripted import Transactional

    app = make_app(queues={"default": 2}, stage_interval=0.1)
    await app.migrate()
    sql(f'CREATE TABLE "{app.config.prefix}".effects (job_id bigint)')
    async with app:
        committed = await app.insert(Transactional.new({"crash_after_commit": True}))
        aborted = await app.insert(Transactional.new({"abort": True}, max_attempts=1))
        done = await _finish(app, committed.id, TERMINAL)
        failed = await _finish(app, aborted.id, TERMINAL)
    # Committed with its effect; the exception raised afterwards changed nothing.
    assert done.state is JobState.COMPLETED and done.errors == []
    assert failed.state is JobState.DISCARDED  # rolled back: no effect, and it failed
    effects = [r[0] for r in sql("SELECT job_id FROM effects")]
    assert effects == [committed.id]
    assert [r[2]["owned"] for r in scripted.RUNS] == [True, True]


async def test_complete_job_refuses_an_attempt_that_lost_the_job(make_app: Any, dsn: str) -> None:
    import psycopg

    app = make_app()
    job = await app.insert(Scripted.new({}))
    running = job  # never fetched: not executing, so this attempt owns nothing
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        assert await app.complete_job(running, conn=conn) is False
    assert (await app.get_job(job.id)).state is JobState.AVAILABLE
