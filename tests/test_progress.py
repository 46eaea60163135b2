"""Live progress and pub/sub: `job.progress()` persisted and published, subscribers in
this process and in another one, `publish`, and job events only while someone watches."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import eventually
from support import scripted

from kerrera import ConfigError, Event, Job, JobState, worker
from kerrera.events.progress import entry_of

TESTS = Path(__file__).parent


@worker(queue="default", max_attempts=1)
async def reporter(job: Job) -> None:
    """Waits for its gate (if any), then reports `steps` progresses and completes."""
    if "key" in job.args:
        await scripted.gate(job.args["key"]).wait()
    steps = int(job.args.get("steps", 10))
    for i in range(1, steps + 1):
        await job.progress(100 * i / steps, f"step {i}", step=i)
        await asyncio.sleep(float(job.args.get("pause", 0)))
    if job.args.get("fail"):
        raise RuntimeError("stems would not separate")


@worker(queue="default", max_attempts=1)
def sync_reporter(job: Job) -> None:
    """A sync worker reporting from its thread."""
    for i in (50, 100):
        job.progress_sync(i, "thread", thread=threading.current_thread().name)


@worker(queue="default", max_attempts=1)
async def bad_reporter(job: Job) -> None:
    """Reports an impossible percentage."""
    await job.progress(150)


async def _done(app: Any, job_id: int) -> Job:
    async def check() -> Job | None:
        job = await app.get_job(job_id)
        return job if job is not None and job.state.terminal else None

    return await eventually(check)


async def _collect(events: Any, until: int) -> list[Event]:
    got: list[Event] = []
    async with asyncio.timeout(15):
        async for event in events:
            got.append(event)
            if event.job_id == until and event.finished:
                return got
    return got


async def test_progress_is_persisted_published_and_throttled(make_app: Any) -> None:
    # An interval longer than the job: however slowly the reports go, only the first is
    # written at once, and the newest of the others is written when the job ends.
    app = make_app(queues={"default": 2}, progress_interval=30)
    async with app:
        job = await app.insert(reporter.new({"steps": 10, "key": "go"}))
        async with app.subscribe(job.id) as events:
            scripted.gate("go").set()
            got = await _collect(events, job.id)
        done = await _done(app, job.id)
    kinds = [e.kind for e in got]
    assert kinds[0] == "snapshot" and kinds[-1] == "completed"
    percents = [e.progress["percent"] for e in got if e.kind == "progress"]  # type: ignore[index]
    assert percents == [10, 100]  # the eight between were held and replaced
    final = done.meta["progress"]
    assert final["percent"] == 100 and final["message"] == "step 10"
    assert final["data"] == {"step": 10} and final["at"].endswith("Z")


async def test_every_report_is_published_in_order_without_throttle(make_app: Any) -> None:
    app = make_app(queues={"default": 2}, progress_interval=0)
    async with app, app.subscribe("default") as events:
        job = await app.insert(reporter.new({"steps": 8}))
        got = await _collect(events, job.id)
    assert [e.kind for e in got] == ["started"] + ["progress"] * 8 + ["completed"]
    assert [e.progress["data"]["step"] for e in got[1:-1]] == list(range(1, 9))  # type: ignore[index]
    assert all(e.job_id == job.id and e.worker == reporter.name for e in got)
    assert got[0].attempt == 1 and got[-1].state == "completed"


async def test_failures_retries_and_cancels_reach_subscribers(make_app: Any) -> None:
    app = make_app(queues={"default": 3})
    async with app, app.subscribe("*") as events:
        failed = await app.insert(reporter.new({"steps": 1, "fail": True}))
        got = await _collect(events, failed.id)
        retried = await app.insert(scripted.Scripted.new({"do": "fail_until", "times": 2}))
        got += await _collect(events, retried.id)
        blocked = await app.insert(scripted.Scripted.new({"do": "block", "key": "never"}))
        await eventually(lambda: app.check_queue("default")["running"] == 1)
        await app.cancel_job(blocked.id)
        got += await _collect(events, blocked.id)
    by_job = {
        j: [e.kind for e in got if e.job_id == j] for j in (failed.id, retried.id, blocked.id)
    }
    assert by_job[failed.id] == ["started", "progress", "failed"]
    assert by_job[retried.id] == ["started", "retrying", "started", "completed"]
    assert by_job[blocked.id] == ["started", "cancelled"]
    failure = next(e for e in got if e.kind == "failed")
    assert failure.error == "RuntimeError: stems would not separate"
    assert failure.state == "discarded" and failure.node == app.node


async def test_a_subscriber_in_another_process_receives_progress_in_order(
    make_app: Any, dsn: str, prefix: str
) -> None:
    app = make_app(queues={"default": 2}, progress_interval=0)
    async with app:
        job = await app.insert(reporter.new({"steps": 20, "key": "start"}))
        await eventually(lambda: app.check_queue("default")["running"] == 1)
        env = {**os.environ, "PYTHONPATH": str(TESTS)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "support.subscriber", dsn, prefix, str(job.id),
            stdout=subprocess.PIPE, env=env,
        )  # fmt: skip
        assert proc.stdout is not None
        try:
            ready = await asyncio.wait_for(proc.stdout.readline(), 30)
            assert json.loads(ready)["kind"] == "ready"
            scripted.gate("start").set()
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    events = [json.loads(line) for line in out.decode().splitlines()]
    assert events[0]["kind"] == "snapshot" and events[0]["state"] == "executing"
    steps = [e["progress"]["data"]["step"] for e in events if e["kind"] == "progress"]
    assert steps == list(range(1, 21))
    assert events[-1]["kind"] == "completed" and events[-1]["job_id"] == job.id


async def test_a_finished_job_subscription_starts_with_its_final_state(make_app: Any) -> None:
    app = make_app(queues={"default": 2})
    async with app:
        job = await app.insert(reporter.new({"steps": 2}))
        await _done(app, job.id)
        async with app.subscribe(job.id) as events:
            first = await asyncio.wait_for(anext(events), 5)
    assert first.kind == "snapshot" and first.state == "completed" and first.finished
    assert first.progress is not None and first.progress["percent"] == 100


async def test_sync_workers_report_progress_from_their_thread(make_app: Any) -> None:
    app = make_app(queues={"default": 2}, progress_interval=0)
    async with app:
        async with app.subscribe(sync_reporter.name, "default") as events:
            job = await app.insert(sync_reporter.new({}))
            got = await _collect(events, job.id)
        done = await _done(app, job.id)
    assert [e.progress["percent"] for e in got if e.kind == "progress"] == [50, 100]  # type: ignore[index]
    assert done.state is JobState.COMPLETED
    assert done.meta["progress"]["data"]["thread"] != threading.current_thread().name


async def test_bad_progress_fails_the_job_with_a_clear_error(make_app: Any) -> None:
    app = make_app(queues={"default": 2})
    async with app:
        job = await app.insert(bad_reporter.new({}))
        done = await _done(app, job.id)
    assert done.state is JobState.DISCARDED
    assert "percent must be a number from 0 to 100, got 150" in done.errors[-1]["error"]
    with pytest.raises(ConfigError, match="not JSON-serialisable"):
        entry_of(10, None, {"when": object()})
    with pytest.raises(ConfigError, match="message must be a string"):
        entry_of(10, 42, {})
    with pytest.raises(ConfigError, match="running job"):
        await Job(worker="x").progress(10)


async def test_publish_reaches_topic_and_wildcard_subscribers(make_app: Any) -> None:
    app = make_app()
    async with (
        app.subscribe("exports") as topic,
        app.subscribe("*") as everything,
        app.subscribe(12345) as one_job,
    ):
        await app.publish("exports", {"user": 7, "status": "ready"})
        await app.publish("other", [1, 2])
        a = await asyncio.wait_for(anext(topic), 5)
        b = await asyncio.wait_for(anext(everything), 5)
        c = await asyncio.wait_for(anext(everything), 5)
        missing = await asyncio.wait_for(anext(one_job), 5)
        assert (missing.kind, missing.state) == ("snapshot", None)
        assert one_job._queue.empty()  # messages never reach a job subscription
    assert (a.kind, a.topic, a.payload) == ("message", "exports", {"user": 7, "status": "ready"})
    assert (b.topic, c.topic) == ("exports", "other")
    with pytest.raises(ConfigError, match="too large"):
        await app.publish("exports", {"blob": os.urandom(6000).hex()})
    with pytest.raises(ConfigError, match="JSON"):
        await app.publish("exports", {"when": object()})
    with pytest.raises(ConfigError, match="target"):
        app.subscribe(1.5)  # type: ignore[arg-type]
    await app.stop()


async def test_no_job_events_are_published_while_nobody_watches(
    make_app: Any, dsn: str, prefix: str
) -> None:
    app = make_app(queues={"default": 5})
    async with app:
        listener = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        try:
            await listener.execute(f'LISTEN "{prefix}.kerrera_events"')
            jobs = await app.insert_all([scripted.Scripted.new({"do": "ok"}) for _ in range(5)])
            for job in jobs:
                await _done(app, job.id)
            # Half a second of listening shows that nothing was published.
            heard = [n async for n in listener.notifies(timeout=0.5)]
        finally:
            await listener.close()
        assert heard == []
        async with app.subscribe("default") as events:
            job = await app.insert(scripted.Scripted.new({"do": "ok"}))
            got = await _collect(events, job.id)
        assert [e.kind for e in got] == ["started", "completed"]


async def test_a_job_that_ends_unseen_still_ends_its_subscription(
    make_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The node never hears that anyone watches (as when a job ends before the first
    # announcement reaches it): the subscription reads the end from the table.
    from kerrera.events.pubsub import Watched

    monkeypatch.setattr(Watched, "heard", lambda self: None)
    app = make_app(queues={"default": 2})
    async with app:
        job = await app.insert(scripted.Scripted.new({"do": "block", "key": "unseen"}))
        await eventually(lambda: app.check_queue("default")["running"] == 1)
        async with app.subscribe(job.id) as events:
            first = await asyncio.wait_for(anext(events), 5)
            scripted.gate("unseen").set()
            last = await asyncio.wait_for(anext(events), 10)
    assert (first.kind, first.state) == ("snapshot", "executing")
    assert (last.kind, last.state, last.job_id) == ("completed", "completed", job.id)
    assert last.finished


@worker(queue="default", max_attempts=1)
async def oversized(job: Job) -> None:
    """Reports more data than a notification can carry."""
    await job.progress(50, "big", blob=os.urandom(6000).hex())


async def test_a_report_too_large_for_a_notification_fails_clearly() -> None:
    from kerrera import testing

    outcome = await testing.perform_job(oversized, {})
    assert outcome.state == "discarded"
    assert "progress report is too large for a notification" in (outcome.error or "")
    assert outcome.progress == []


async def test_a_subscription_to_an_unknown_job_says_so(make_app: Any) -> None:
    app = make_app()
    async with app.subscribe(987654) as events:
        first = await asyncio.wait_for(anext(events), 5)
    assert (first.kind, first.job_id, first.state, first.finished) == (
        "snapshot",
        987654,
        None,
        False,
    )
    await app.stop()
