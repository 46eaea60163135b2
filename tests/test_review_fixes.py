"""Regressions found by review: a finished job whose last progress write is interrupted
keeps its outcome; jobs fetched after a shutdown gave up are put back; typed args with
aliases and dataclass instances; progress_sync under the testing helpers; drain without
safety; a job subscription always begins with its snapshot."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import psycopg
import pytest
from conftest import eventually
from pydantic import BaseModel, Field
from support import scripted

from kerrera import ConfigError, Job, JobState, testing, worker

RUNS: list[int] = []


@worker(queue="rv")
async def report_then_finish(job: Job) -> None:
    """Reports twice (the second is held by a long throttle), waits for its gate, ends."""
    await job.progress(10, "a")
    await job.progress(90, "b")
    await scripted.gate("finish").wait()
    RUNS.append(job.id or 0)


class Track(BaseModel):
    """Args with a camelCase alias, as an Elixir service might write them."""

    track_id: int = Field(alias="trackId")


@worker(queue="rv")
async def aliased(job: Job, args: Track) -> int:
    """Returns the typed field."""
    return args.track_id


@dataclasses.dataclass
class Stems:
    """Dataclass args."""

    track_id: int


@worker(queue="rv")
async def with_stems(job: Job, args: Stems) -> None:
    """Takes dataclass args."""


@worker(queue="rv", max_attempts=1)
def sync_reporter(job: Job) -> None:
    """A sync worker reporting from its thread."""
    job.progress_sync(50, "half")


@worker(queue="rv", max_attempts=1)
async def boom(job: Job) -> None:
    """Fails."""
    raise RuntimeError("boom")


@worker(queue="rv")
async def fine(job: Job) -> None:
    """Succeeds."""


async def test_a_finished_job_keeps_its_outcome_when_its_last_progress_write_is_cut(
    make_app: Any, dsn: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    RUNS.clear()
    app = make_app(queues={"rv": 1}, progress_interval=30)
    await app.start()
    job = await app.insert(report_then_finish.new({}))

    async def first_report() -> bool:
        row = await app.get_job(job.id)
        return row is not None and row.meta.get("progress", {}).get("percent") == 10

    await eventually(first_report)
    locker = await psycopg.AsyncConnection.connect(dsn)  # holds the row: the write waits
    await locker.execute(f'SELECT 1 FROM "{prefix}".oban_jobs WHERE id = %s FOR UPDATE', (job.id,))
    scripted.gate("finish").set()
    await eventually(lambda: RUNS)
    await eventually(lambda: _waiting_on_a_lock(dsn))  # the last report's write is blocked
    stopping = asyncio.create_task(app.stop(grace=0.2))
    await eventually(lambda: _grace_ended(caplog))  # during the held report's write
    await locker.rollback()
    await locker.close()
    await stopping
    row = await make_app().get_job(job.id)
    assert [job.id] == RUNS
    assert row.state is JobState.COMPLETED and row.attempt == 1


async def test_jobs_fetched_after_shutdown_gave_up_are_put_back(
    make_app: Any, dsn: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(queues={"rv": 3})
    await app.migrate()
    await app.insert_all([fine.new({}) for _ in range(3)])
    locker = await psycopg.AsyncConnection.connect(dsn)
    await locker.execute(f'LOCK TABLE "{prefix}".oban_jobs IN SHARE MODE')  # fetches wait
    await app.start()
    await eventually(lambda: _waiting_on_a_lock(dsn))  # a fetch is in flight, blocked
    stopping = asyncio.create_task(app.stop(grace=0.1))
    await eventually(lambda: _grace_ended(caplog))  # with that fetch still in flight
    await locker.rollback()
    await locker.close()
    await stopping
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(f'SELECT state::text FROM "{prefix}".oban_jobs')
        states = sorted(r[0] for r in await cur.fetchall())
    assert states == ["available"] * 3


def test_typed_args_round_trip_aliases_and_validate_dataclass_instances() -> None:
    job = aliased.new({"trackId": 7})
    assert job.args == {"trackId": 7}
    outcome = asyncio.run(testing.perform_job(aliased, {"trackId": 7}))
    assert outcome.state == "completed"
    try:
        with_stems.new(Stems(track_id="abc"))  # type: ignore[arg-type]
    except ConfigError as exc:
        assert "track_id" in str(exc)
    else:
        raise AssertionError("a dataclass instance with a bad field was accepted")


async def test_progress_sync_works_under_the_testing_helpers(make_app: Any) -> None:
    outcome = await testing.perform_job(sync_reporter, {})
    assert outcome.state == "completed" and [p["percent"] for p in outcome.progress] == [50]
    app = make_app(testing="inline")
    job = await asyncio.to_thread(app.sync.insert, sync_reporter.new({}))
    assert job.state is JobState.COMPLETED and job.meta["progress"]["percent"] == 50
    app.sync.close()


async def test_drain_without_safety_puts_the_unrun_jobs_back(make_app: Any) -> None:
    app = make_app(testing="manual")
    async with app:
        await app.insert(boom.new({}))
        rest = await app.insert_all([fine.new({}) for _ in range(3)])
        with pytest.raises(RuntimeError, match=r"^boom$"):
            await app.drain_queue("rv", with_safety=False)
        states = {(await app.get_job(j.id)).state for j in rest}
        assert states == {JobState.AVAILABLE}
        assert (await app.drain_queue("rv"))["completed"] == 3


async def test_a_job_subscription_always_begins_with_its_snapshot(make_app: Any) -> None:
    @worker(queue="rv", name="tests.chatty")
    async def chatty(job: Job) -> None:
        for i in range(200):
            await job.progress(i / 2, "step")
            await asyncio.sleep(0.002)

    app = make_app(queues={"rv": 1}, progress_interval=0)
    async with app:
        job = await app.insert(chatty.new({}))
        await eventually(lambda: app.check_queue("rv")["running"] == 1)
        firsts = []
        for _ in range(8):
            async with app.subscribe(job.id) as events:
                firsts.append((await asyncio.wait_for(anext(events), 5)).kind)
    assert firsts == ["snapshot"] * 8


def _grace_ended(caplog: pytest.LogCaptureFixture) -> bool:
    """Whether a queue's shutdown grace period has ended (its producer said so)."""
    return any(
        r.name == "kerrera.producer" and "still running after" in r.getMessage()
        for r in caplog.records
    )


def _waiting_on_a_lock(dsn: str) -> bool:
    """Whether some session of the test database waits for a lock now."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()"
        ).fetchone()
    return bool(row and row[0])
