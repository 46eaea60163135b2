"""The runtime with `notifier="isolated"`: everything this process sends goes through its
in-process notifier (inserts, stages, retries, releases, pkill, leader and progress
messages, pub/sub), nothing goes out with pg_notify, and what the node hears of itself
works as it does over PostgreSQL: a local insert wakes the producer at once and a local
cancel stops a running job."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from typing import Any

import psycopg
from conftest import eventually
from support import scripted
from support.scripted import Scripted

from kerrera import Job, JobState, Kerrera, worker
from kerrera.engine.base import AckBatch
from kerrera.notifier import IsolatedNotifier

#: A poll tick far beyond every wait below: only a notification explains a quick start.
SLOW_POLL = 30.0


async def _idle(app: Kerrera) -> None:
    """Run one job to its end, so the producer has fetched, found nothing and now waits
    for a notification (or its slow poll tick)."""
    warmup = await app.insert(Scripted.new({"warmup": True}))
    await eventually(lambda: _state(app, warmup.id, JobState.COMPLETED))
    scripted.RUNS.clear()


async def _state(app: Kerrera, job_id: int | None, state: JobState) -> bool:
    assert job_id is not None
    job = await app.get_job(job_id)
    return job is not None and job.state is state


def _ran(job: Job) -> bool:
    return any(run[0] == job.id for run in scripted.RUNS)


class Heard:
    """Records what an app's own notifier delivers, per channel."""

    def __init__(self, app: Kerrera) -> None:
        notifier = app._notifier
        assert isinstance(notifier, IsolatedNotifier)
        self.messages: list[tuple[str, dict[str, Any]]] = []
        sql = app.engine.sql
        self.names = {
            sql.insert_channel: "insert", sql.signal_channel: "signal",
            sql.leader_channel: "leader", sql.events_channel: "events",
        }  # fmt: skip
        for channel in self.names:
            notifier.listen(channel, self._heard)

    def _heard(self, channel: str, message: dict[str, Any]) -> None:
        self.messages.append((self.names[channel], message))

    def take(self) -> list[tuple[str, dict[str, Any]]]:
        taken, self.messages = self.messages, []
        return taken


async def test_a_local_insert_wakes_the_producer_at_once(make_app: Any) -> None:
    app = make_app(queues={"default": 2}, poll_interval=SLOW_POLL, notifier="isolated")
    async with app:
        await _idle(app)
        job = await app.insert(Scripted.new({}))
        await eventually(lambda: _ran(job))
        many = await app.insert_all([Scripted.new({"n": i}) for i in range(250)])  # COPY
        await eventually(lambda: _ran(many[0]))


async def test_a_sync_insert_from_another_thread_wakes_the_producer(
    make_app: Any, dsn: str
) -> None:
    app = make_app(queues={"default": 2}, poll_interval=SLOW_POLL, notifier="isolated")
    async with app:
        await _idle(app)
        pooled = await asyncio.to_thread(app.sync.insert, Scripted.new({"pooled": True}))
        await eventually(lambda: _ran(pooled))

        def insert_on_own_connection() -> Job:
            with psycopg.connect(dsn, autocommit=True) as conn:
                return app.sync.insert(Scripted.new({"own": True}), conn=conn)

        own = await asyncio.to_thread(insert_on_own_connection)
        await eventually(lambda: _ran(own))


async def test_an_insert_in_the_callers_transaction_wakes_the_producer_on_commit(
    make_app: Any, dsn: str
) -> None:
    app = make_app(queues={"default": 2}, poll_interval=SLOW_POLL, notifier="isolated")
    async with app:
        await _idle(app)
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            async with conn.transaction():
                job = await app.insert(Scripted.new({}), conn=conn)
                # A wake-up delivered now would find nothing and be spent; this shows
                # that it waits for the commit (nothing can run the job meanwhile).
                await asyncio.sleep(0.3)
                assert not _ran(job)
            await eventually(lambda: _ran(job))

        def insert_in_a_sync_transaction() -> Job:
            with psycopg.connect(dsn) as sync_conn, sync_conn.transaction():
                return app.sync.insert(Scripted.new({"sync": True}), conn=sync_conn)

        in_thread = await asyncio.to_thread(insert_in_a_sync_transaction)
        await eventually(lambda: _ran(in_thread))


async def test_cancel_job_stops_a_running_async_job(make_app: Any) -> None:
    app = make_app(queues={"default": 2}, notifier="isolated")
    async with app:
        job = await app.insert(Scripted.new({"do": "block", "key": "forever"}))
        await eventually(lambda: job.id in app.check_queue("default")["running_ids"])
        cancelled = await app.cancel_job(job.id)
        assert cancelled is not None and cancelled.state is JobState.CANCELLED
        await eventually(lambda: app.check_queue("default")["running"] == 0)
        assert await _state(app, job.id, JobState.CANCELLED)


_saw_cancel = threading.Event()


@worker(queue="default")
def patient_isolated(job: Job) -> None:
    """A sync job that ends as soon as it learns it was cancelled."""
    for _ in range(1000):
        if job.cancelled():
            _saw_cancel.set()
            return
        threading.Event().wait(0.01)


async def test_cancel_job_reaches_a_running_sync_job(make_app: Any) -> None:
    _saw_cancel.clear()
    app = make_app(queues={"default": 1}, notifier="isolated")
    async with app:
        job = await app.insert(patient_isolated.new({}))
        await eventually(lambda: job.id in app.check_queue("default")["running_ids"])
        await asyncio.to_thread(app.sync.cancel_job, job.id)  # the sync face, too
        await eventually(_saw_cancel.is_set)
        await eventually(lambda: app.check_queue("default")["running"] == 0)
        assert await _state(app, job.id, JobState.CANCELLED)


async def test_staging_and_retry_job_wake_the_producer(make_app: Any) -> None:
    app = make_app(
        queues={"default": 2}, poll_interval=SLOW_POLL, stage_interval=0.1, notifier="isolated"
    )
    async with app:
        await _idle(app)
        later = await app.insert(Scripted.new({"later": True}, schedule_in=0.3))
        await eventually(lambda: _ran(later))
        failed = await app.insert(Scripted.new({"do": "error"}, max_attempts=1))
        await eventually(lambda: _state(app, failed.id, JobState.DISCARDED))
        scripted.RUNS.clear()
        await app.retry_job(failed.id)
        await eventually(lambda: _ran(failed))


async def test_every_engine_notification_goes_through_the_notifier_and_none_on_the_wire(
    make_app: Any, sql: Any, dsn: str, prefix: str
) -> None:
    app = make_app(notifier="isolated")
    engine = await app._open()
    heard = Heard(app)
    wire = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    try:
        for name in ("oban_insert", "oban_signal", "oban_leader", "kerrera_events"):
            await wire.execute(f'LISTEN "{prefix}.{name}"')

        await app.insert(Scripted.new({}, queue="a"))
        await app.insert(Scripted.new({}, queue="b", schedule_in=60))  # not available yet
        await app.insert(Scripted.new({"u": 1}, queue="c", unique=True))
        await app.insert_all([Scripted.new({"n": i}, queue="d") for i in range(250)])  # COPY
        assert heard.take() == [
            ("insert", {"queue": "a"}), ("insert", {"queue": "c"}), ("insert", {"queue": "d"}),
        ]  # fmt: skip

        sql("UPDATE oban_jobs SET scheduled_at = scheduled_at - interval '2 minutes' "
            "WHERE queue = 'b'")  # fmt: skip
        assert await engine.stage_jobs(100) == {"b": 1}
        assert heard.take() == [("insert", {"queue": "b"})]

        (done,) = sql("UPDATE oban_jobs SET state = 'discarded', discarded_at = now() "
                      "WHERE queue = 'a' RETURNING id")[0]  # fmt: skip
        await app.retry_job(done)
        assert heard.take() == [("insert", {"queue": "a"})]

        scheduled, running = await app.insert_all(
            [Scripted.new({}, queue="e", schedule_in=60), Scripted.new({}, queue="e")]
        )
        heard.take()
        sql("UPDATE oban_jobs SET state = 'executing', attempt = 1, attempted_at = now(), "
            "attempted_by = ARRAY['elsewhere', 'p-1'] WHERE id = %s", (running.id,))  # fmt: skip
        await app.cancel_job([scheduled.id, running.id])
        # Only a job that may be running is signalled (as the statement itself does).
        assert heard.take() == [("signal", {"action": "pkill", "job_id": running.id})]

        started = datetime.now(UTC).replace(tzinfo=None)
        assert await engine.elect_leader("Kerrera", "me", started, 30)
        await engine.resign_leader("Kerrera", "me", started)
        assert heard.take() == [("leader", {"down": "Kerrera"})]

        (job,) = await app.insert_all([Scripted.new({}, queue="f")])
        heard.take()
        sql("UPDATE oban_jobs SET state = 'executing', attempt = 1, attempted_at = now(), "
            "attempted_by = ARRAY['n', 'p-2'] WHERE id = %s", (job.id,))  # fmt: skip
        assert await engine.write_progress(job.id, 1, {"percent": 5}, '{"k":"progress"}')
        assert heard.take() == [("events", {"k": "progress"})]

        sql("UPDATE oban_jobs SET attempted_at = now() - interval '2 hours' WHERE id = %s",
            (job.id,))  # fmt: skip
        assert await engine.rescue_jobs(30, 60) == (1, 0)  # no producer row: rescued
        assert heard.take() == [("insert", {"queue": "f"})]

        # None of it went out over PostgreSQL (other processes do not hear an isolated app).
        assert [n async for n in wire.notifies(timeout=0.5)] == []
    finally:
        await wire.close()


async def test_released_jobs_are_announced_through_the_notifier(make_app: Any, sql: Any) -> None:
    app = make_app(notifier="isolated")
    engine = await app._open()
    heard = Heard(app)
    job = await app.insert(Scripted.new({}, queue="g"))
    heard.take()
    sql("UPDATE oban_jobs SET state = 'executing', attempt = 1, attempted_at = now(), "
        "attempted_by = ARRAY['n', 'p-3'] WHERE id = %s", (job.id,))  # fmt: skip
    assert job.id is not None
    await engine.ack_jobs(AckBatch(released_ids=[job.id], released_attempts=[1], producer="p-3"))
    assert await _state(app, job.id, JobState.AVAILABLE)
    assert heard.take() == [("insert", {"queue": "g"})]


async def test_publish_and_job_events_stay_in_this_process(make_app: Any) -> None:
    app = make_app(queues={"default": 2}, notifier="isolated")
    other = make_app()  # a PostgreSQL-notified app on the same database
    async with (
        app,
        app.subscribe("exports") as topic,
        app.subscribe("default") as jobs,
        other.subscribe("exports") as elsewhere,
    ):
        await app.publish("exports", {"ready": True})
        message = await asyncio.wait_for(anext(topic), 5)
        assert (message.kind, message.payload) == ("message", {"ready": True})
        job = await app.insert(Scripted.new({}))
        kinds = []
        async with asyncio.timeout(10):
            async for event in jobs:
                kinds.append(event.kind)
                if event.job_id == job.id and event.finished:
                    break
        assert kinds == ["started", "completed"]
        await asyncio.sleep(0.5)  # shows that nothing reaches the other app
        assert elsewhere._queue.empty()


async def test_queue_commands_and_reports_from_this_process_apply(make_app: Any) -> None:
    app = make_app(queues={"default": 1}, notifier="isolated")
    async with app:
        await app.pause_queue("default")
        assert app.check_queue("default")["paused"] is True
        job = await app.insert(Scripted.new({}))
        await asyncio.sleep(1.5)  # longer than the poll interval: nothing may start
        assert not _ran(job)
        await app.scale_queue("default", 3)
        await app.resume_queue("default")
        await eventually(lambda: _ran(job))
        check = app.check_queue("default")
        assert (check["paused"], check["limit"]) == (False, 3)
        (row,) = await app.check_all_queues(fresh=5)
        assert (row["node"], row["queue"], row["limit"]) == (app.node, "default", 3)


async def test_deliveries_from_other_threads_run_on_the_notifier_loop() -> None:
    notifier = IsolatedNotifier()
    got: list[tuple[dict[str, Any], str]] = []
    notifier.listen("ch", lambda _c, m: got.append((m, threading.current_thread().name)))
    notifier.listen("ch", lambda _c, _m: 1 / 0)  # a failing listener harms no other one
    await notifier.start()
    await asyncio.to_thread(notifier.notify_threadsafe, "ch", {"a": 1}, '{"b":2}')
    await eventually(lambda: len(got) == 2)
    assert got == [({"a": 1}, threading.current_thread().name), ({"b": 2}, got[0][1])]
    await notifier.stop()


async def test_the_postgres_notifier_also_sends_from_other_threads(
    make_app: Any, dsn: str, prefix: str
) -> None:
    # The same seam over PostgreSQL (what sync code would use to send a non-statement
    # message): delivered with pg_notify from the notifier's loop.
    app = make_app()
    await app._open()
    notifier = app._notifier
    assert notifier is not None and notifier.transactional
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as wire:
        await wire.execute(f'LISTEN "{prefix}.kerrera_control"')
        channel = app.engine.sql.control_channel
        await asyncio.to_thread(notifier.notify_threadsafe, channel, {"a": 1}, {"b": 2})
        heard = []
        async for note in wire.notifies(timeout=5, stop_after=2):
            heard.append(note.payload)
    assert heard == ['{"a":1}', '{"b":2}']
