"""`await app.wait(job)` and `app.sync.wait(job)`: the finished job and its recorded
result, woken by the job's events, with polling as the fallback, against the real
database."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from support.scripted import Scripted

from kerrera import ConfigError, JobState, Kerrera
from kerrera.app.inspect import wait_until_finished


async def test_wait_returns_the_completed_job_with_its_recorded_result(make_app: Any) -> None:
    app = make_app(queues={"default": 2})
    await app.start()
    job = await app.insert(Scripted.new({"do": "record", "value": {"stems": 4}}))
    done = await app.wait(job, timeout=60)
    assert done.id == job.id and done.state is JobState.COMPLETED
    assert done.meta["return"] == {"stems": 4} and done.completed_at is not None
    again = await app.wait(job.id or 0)  # already finished: answered from the row
    assert again.state is JobState.COMPLETED and again.meta["return"] == {"stems": 4}


async def test_wait_returns_discarded_and_cancelled_jobs_too(make_app: Any) -> None:
    app = make_app(queues={"default": 2})
    await app.start()
    failing = await app.insert(Scripted.new({"do": "error", "message": "nope"}, max_attempts=2))
    stopped = await app.insert(Scripted.new({"do": "cancel", "reason": "not today"}))
    failed = await app.wait(failing, timeout=60)
    assert failed.state is JobState.DISCARDED and failed.attempt == 2
    assert "RuntimeError: nope" in failed.errors[-1]["error"]
    assert (await app.wait(stopped, timeout=60)).state is JobState.CANCELLED


async def test_wait_wakes_on_the_jobs_events(make_app: Any) -> None:
    # With a poll far longer than the test's timeout, only the completion event can
    # end the wait: a wait that polled would hang here and fail the test.
    node = make_app(queues={"default": 1})
    client = make_app()
    await node.start()
    job = await client.insert(Scripted.new({"do": "sleep", "seconds": 0.5}))
    done = await wait_until_finished(client, job.id or 0, poll=math.inf)
    assert done.state is JobState.COMPLETED


async def test_wait_falls_back_to_reading_the_row(make_app: Any) -> None:
    # An in-process notifier hears only its own process's app: the client's never hears
    # the node's events, so the row is what tells it the job ended.
    node = make_app(queues={"default": 1})
    client = make_app(notifier="isolated")
    await node.start()
    job = await client.insert(Scripted.new({"do": "record", "value": 7}))
    done = await wait_until_finished(client, job.id or 0, poll=0.05)
    assert done.state is JobState.COMPLETED and done.meta["return"] == 7


async def test_wait_times_out_and_refuses_what_is_not_a_job(make_app: Any) -> None:
    app = make_app()
    later = await app.insert(Scripted.new({}, schedule_in=3600))
    with pytest.raises(TimeoutError):
        await app.wait(later, timeout=0.2)
    assert (await app.get_job(later.id or 0)).state is JobState.SCHEDULED  # type: ignore[union-attr]
    with pytest.raises(LookupError, match="no job 999999"):
        await app.wait(999999, timeout=5)
    with pytest.raises(ConfigError, match="option 'timeout'"):
        await app.wait(later, timeout=-1)
    with pytest.raises(ConfigError, match="saved job or a job id"):
        await app.wait(Scripted.new({}))


async def test_wait_notices_a_job_deleted_meanwhile(make_app: Any) -> None:
    app = make_app()
    later = await app.insert(Scripted.new({}, schedule_in=3600))
    waiting = asyncio.ensure_future(wait_until_finished(app, later.id or 0, poll=0.05))
    await asyncio.sleep(0.2)  # lets the waiter begin first (it also holds if it has not)
    await app.delete_job(later.id or 0)
    with pytest.raises(LookupError, match="deleted"):
        await asyncio.wait_for(waiting, 30)


async def test_sync_wait_from_a_thread_with_no_loop(make_app: Any, dsn: str, prefix: str) -> None:
    node = make_app(queues={"default": 1})
    await node.start()
    client = Kerrera(dsn, prefix=prefix)
    try:
        job = client.sync.insert(Scripted.new({"do": "record", "value": "done"}))

        def wait() -> Any:
            return client.sync.wait(job, timeout=60)

        done = await asyncio.to_thread(wait)
        assert done.state is JobState.COMPLETED and done.meta["return"] == "done"
        later = client.sync.insert(Scripted.new({}, schedule_in=3600))
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(client.sync.wait, later, 0.2)
    finally:
        client.sync.close()
