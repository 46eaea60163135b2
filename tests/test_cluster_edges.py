"""Edge cases of the cluster features found in review: draining queues, commands racing
shutdown or each other, Elixir signals, unique retries, and options that would disable
a service. Each failed before its fix."""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from conftest import eventually
from support import scripted
from support.scripted import Scripted

from kerrera import ConfigError, Job, Kerrera, Worker

FAST = {"heartbeat_interval": 0.3, "producer_ttl": 1.5, "rescue_interval": 0.3}


async def test_a_draining_queue_keeps_heartbeating_so_its_jobs_are_not_rescued(
    make_app: Any,
) -> None:
    a = make_app(queues={"default": 1}, node="a", shutdown_grace_period=10.0, **FAST)
    b = make_app(queues={"default": 1}, node="b", shutdown_grace_period=10.0, **FAST)
    await a.start()
    await b.start()
    await b.pause_queue("default", node="b")
    await a.insert(Scripted.new({"do": "sleep", "seconds": 4}))
    await eventually(lambda: len(scripted.RUNS) == 1, timeout=5)
    await a.stop_queue("default", node="a")  # drains for up to 10 s, longer than the ttl
    await b.resume_queue("default", node="b")
    await asyncio.sleep(3.5)
    assert len(scripted.RUNS) == 1, scripted.RUNS


async def test_a_queue_command_during_shutdown_starts_nothing(make_app: Any, sql: Any) -> None:
    a = make_app(queues={"default": 1}, node="a", shutdown_grace_period=3.0)
    operator = make_app()
    await a.start()
    await a.insert(Scripted.new({"do": "sleep", "seconds": 1.5}))
    await eventually(lambda: len(scripted.RUNS) == 1, timeout=5)
    stopping = asyncio.create_task(a.stop())
    await asyncio.sleep(0.3)
    await operator.start_queue("other", 1, node="a")
    other = await operator.insert(Scripted.new({"do": "sleep", "seconds": 5}, queue="other"))
    await stopping
    assert sql("SELECT state::text FROM oban_jobs WHERE id = %s", (other.id,)) == [("available",)]
    assert a.producers == {}


async def test_stop_then_start_keeps_the_limit_while_the_old_one_drains(make_app: Any) -> None:
    a = make_app(queues={"default": 1}, node="a", shutdown_grace_period=10.0)
    await a.start()
    await a.insert_all([Scripted.new({"do": "sleep", "seconds": 1.0}) for _ in range(3)])
    await eventually(lambda: len(scripted.RUNS) == 1, timeout=5)
    await a.stop_queue("default")
    await a.start_queue("default", 1)
    await eventually(lambda: len(scripted.RUNS) == 3, timeout=10)
    assert scripted.max_concurrency() == 1


async def test_an_elixir_pause_survives_unrelated_commands(make_app: Any) -> None:
    a = make_app(queues={"default": 1, "other": 1}, node="a")
    await a.start()
    await eventually(lambda: a._notifier.connected, timeout=5)
    await a.engine.notify(
        a.engine.sql.signal_channel, '{"action":"pause","ident":"any","queue":"default"}'
    )
    await eventually(lambda: a.check_queue("default")["paused"], timeout=3)
    await a.scale_queue("other", 2)  # re-reads the table: must not undo Elixir's pause
    assert a.check_queue("default")["paused"]
    await a.resume_queue("default")  # a Kerrera command for the queue replaces it
    assert not a.check_queue("default")["paused"]


async def test_a_signal_for_a_longer_node_name_is_not_ours(make_app: Any) -> None:
    a = make_app(queues={"default": 1}, node="worker")
    await a.start()
    await eventually(lambda: a._notifier.connected, timeout=5)
    for ident in ("Oban.eu.worker", "Oban.worker"):
        await a.engine.notify(
            a.engine.sql.signal_channel,
            f'{{"action":"scale","ident":"{ident}","queue":"default","limit":{len(ident)}}}',
        )
    await eventually(lambda: a.check_queue("default")["limit"] == len("Oban.worker"))


async def test_concurrent_commands_are_applied_when_they_return(make_app: Any) -> None:
    a = make_app(queues={"q1": 1, "q2": 1, "q3": 1}, node="a")
    await a.start()
    await asyncio.gather(a.pause_queue("q1"), a.pause_queue("q2"), a.pause_queue("q3"))
    assert all(a.check_queue(q)["paused"] for q in ("q1", "q2", "q3"))


async def test_a_failed_read_of_queue_state_is_retried(make_app: Any) -> None:
    a = make_app(queues={"default": 1}, node="a")
    operator = make_app()
    await a.start()
    await eventually(lambda: a._notifier.connected, timeout=5)
    real, calls = a.engine.queue_states, [0]

    async def flaky(node: str) -> Any:
        calls[0] += 1
        if calls[0] == 1:
            raise psycopg.OperationalError("simulated: connection lost")
        return await real(node)

    a.engine.queue_states = flaky
    await operator.pause_queue("default")
    await eventually(lambda: a.check_queue("default")["paused"], timeout=5)


class _Stubborn(Worker, queue="stubborn"):
    """A sync job that ignores cancellation and counts how many run at once."""

    live = 0
    peak = 0
    lock = threading.Lock()

    def process(self, job: Job) -> None:
        with _Stubborn.lock:
            _Stubborn.live += 1
            _Stubborn.peak = max(_Stubborn.peak, _Stubborn.live)
        try:
            time.sleep(1.5)
        finally:
            with _Stubborn.lock:
                _Stubborn.live -= 1


async def test_a_cancelled_sync_job_keeps_its_slot_until_its_thread_ends(make_app: Any) -> None:
    app = make_app(queues={"stubborn": 1}, node="n")
    await app.start()
    first, second = await app.insert_all([_Stubborn.new({"n": 1}), _Stubborn.new({"n": 2})])
    await eventually(lambda: _Stubborn.live == 1, timeout=5)
    await app.cancel_job(first.id)
    await eventually(lambda: app.check_queue("stubborn")["running"] == 0)
    await asyncio.sleep(0.5)
    assert _Stubborn.live == 1  # the second waits for the first thread
    await eventually(
        lambda: (lambda j: j and str(j.state) == "completed")(app.sync.get_job(second.id)),
        timeout=10,
    )
    assert _Stubborn.peak == 1


U = {"period": None, "states": ["available", "scheduled", "executing", "retryable"]}


async def test_retrying_duplicates_together_gives_their_keys_up(make_app: Any, sql: Any) -> None:
    app = make_app()
    a = await app.insert(Scripted.new({"k": 1}, unique=U))
    sql("UPDATE oban_jobs SET state = 'discarded', discarded_at = now() WHERE id = %s", (a.id,))
    b = await app.insert(Scripted.new({"k": 1}, unique=U))
    sql("UPDATE oban_jobs SET state = 'discarded', discarded_at = now() WHERE id = %s", (b.id,))
    retried = await app.retry_job([a.id, b.id])
    assert len(retried) == 2 and all(str(j.state) == "available" for j in retried)


async def test_a_retry_racing_a_unique_insert_does_not_fail(make_app: Any, dsn: str) -> None:
    app = make_app()
    a = await app.insert(Scripted.new({"k": 2}, unique=U))
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
        await c.execute(
            f"UPDATE \"{app.config.prefix}\".oban_jobs SET state = 'discarded', "
            "discarded_at = now() WHERE id = %s",
            (a.id,),
        )
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        new = await make_app().insert(Scripted.new({"k": 2}, unique=U), conn=conn)
        retry = asyncio.create_task(app.retry_job(a.id))  # waits on the new index entry
        await asyncio.sleep(0.5)
        await conn.commit()
        retried = await retry
    assert str(retried.state) == "available" and "uniq_key" not in retried.meta
    assert not new.conflict


async def test_scheduled_at_periods_count_like_oban_and_never_duplicate(make_app: Any) -> None:
    app = make_app()
    spec = {"period": 60, "timestamp": "scheduled_at"}
    later = await app.insert(Scripted.new({"k": 3}, unique=spec, schedule_in=600))
    # As in Oban, a holder scheduled later blocks a job due now ...
    now = await app.insert(Scripted.new({"k": 3}, unique=spec))
    assert now.conflict and now.id == later.id
    # ... and a twin of the holder can never slip in beside it.
    twin = await app.insert(Scripted.new({"k": 3}, unique=spec, schedule_in=600))
    assert twin.conflict and twin.id == later.id


async def test_of_duplicates_retried_together_the_oldest_keeps_the_key(make_app: Any) -> None:
    app = make_app()
    spec = {"period": None}
    a = await app.insert(Scripted.new({"x": 1}, unique=spec))
    await app.cancel_job(a.id)
    b = await app.insert(Scripted.new({"x": 1}, unique=spec))
    await app.cancel_job(b.id)
    retried = await app.retry_job([a.id, b.id])
    assert [("uniq_key" in j.meta) for j in retried] == [True, False]
    third = await app.insert(Scripted.new({"x": 1}, unique=spec))
    assert third.conflict and third.id == a.id


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("cron_catch_up", math.inf),
        ("cron_catch_up", 30 * 86400),
        ("leader_lease", math.inf),
        ("leader_lease", math.nan),
        ("prune_interval", math.nan),
        ("poll_interval", math.inf),
    ],
)
def test_seconds_must_be_finite_and_sane(option: str, value: float) -> None:
    with pytest.raises(ConfigError, match=option):
        Kerrera("postgresql://x", **{option: value})


async def test_reboot_jobs_come_from_the_leader_that_boots_not_a_successor(
    make_app: Any, sql: Any
) -> None:
    tab = [("@reboot", Scripted, {"name": "warm"})]
    a = make_app(queues={"default": 1}, node="a", crontab=tab)
    await a.start()
    await eventually(lambda: sql("SELECT count(*) FROM oban_jobs")[0][0] == 1, timeout=5)
    b = make_app(queues={"default": 1}, node="b", crontab=tab)
    await b.start()  # a follower as it boots
    await a.stop()
    await eventually(lambda: b.is_leader, timeout=5)
    await asyncio.sleep(0.5)
    assert sql("SELECT count(*) FROM oban_jobs WHERE meta->>'cron_name' = 'warm'")[0][0] == 1


async def test_two_draining_predecessors_both_count_against_the_limit(make_app: Any) -> None:
    a = make_app(queues={"default": 2}, node="a", shutdown_grace_period=20.0)
    await a.start()
    await a.insert(Scripted.new({"do": "sleep", "seconds": 4}))
    await eventually(lambda: len(scripted.RUNS) == 1, timeout=5)
    await a.stop_queue("default")
    await a.start_queue("default", 2)
    await a.insert(Scripted.new({"do": "sleep", "seconds": 4}))
    await eventually(lambda: len(scripted.RUNS) == 2, timeout=5)
    await a.stop_queue("default")
    await a.start_queue("default", 2)
    await a.insert_all([Scripted.new({"do": "sleep", "seconds": 1}) for _ in range(2)])
    await eventually(lambda: len(scripted.RUNS) == 4, timeout=15)
    assert scripted.max_concurrency() == 2


async def test_a_released_sync_job_waits_for_its_thread_before_running_again(
    make_app: Any,
) -> None:
    _Stubborn.live = _Stubborn.peak = 0
    a = make_app(queues={"stubborn": 1}, node="a", shutdown_grace_period=0.3)
    await a.start()
    job = await a.insert(_Stubborn.new({}))
    await eventually(lambda: _Stubborn.live == 1, timeout=5)
    await a.stop_queue("stubborn")  # grace 0.3 s: released, but its thread runs on
    await a.start_queue("stubborn", 1)

    async def completed() -> bool:
        return str((await a.get_job(job.id)).state) == "completed"

    await eventually(completed, timeout=10)
    assert _Stubborn.peak == 1  # the second run started only after the first thread ended
    assert (await a.get_job(job.id)).attempt == 2


async def test_jobs_left_executing_by_a_failed_shutdown_are_rescued_by_the_ttl(
    make_app: Any, sql: Any
) -> None:
    a = make_app(queues={"default": 1}, node="a", **FAST)
    b = make_app(queues={"other": 1}, node="b", **FAST)
    await a.start()
    await b.start()
    job = await a.insert(Scripted.new({"do": "sleep", "seconds": 30}))
    await eventually(lambda: len(scripted.RUNS) == 1, timeout=5)

    async def away(*_args: Any, **_kwargs: Any) -> Any:
        raise psycopg.OperationalError("simulated: the database is away")

    a.engine.fetch_jobs = away
    a.engine.ack_jobs = away
    await a.stop(grace=0.2)  # cannot put the job back: it stays executing
    state = "SELECT state::text FROM oban_jobs WHERE id = %s"
    assert sql(state, (job.id,)) == [("executing",)]
    await eventually(lambda: sql(state, (job.id,)) != [("executing",)], timeout=8)


async def test_a_kerrera_command_replaces_only_the_elixir_fields_it_sets(make_app: Any) -> None:
    a = make_app(queues={"default": 1, "gone": 1}, node="a")
    await a.start()
    await eventually(lambda: a._notifier.connected, timeout=5)
    for message in (
        '{"action":"pause","ident":"any","queue":"default"}',
        '{"action":"stop","ident":"any","queue":"gone"}',
    ):
        await a.engine.notify(a.engine.sql.signal_channel, message)
    await eventually(lambda: a.check_queue("default")["paused"] and "gone" not in a.producers)
    await a.scale_queue("default", 3)
    await a.scale_queue("gone", 3)
    assert a.check_queue("default")["paused"] and a.check_queue("default")["limit"] == 3
    assert "gone" not in a.producers


async def test_stop_grace_applies_to_draining_queues_too(make_app: Any) -> None:
    a = make_app(queues={"default": 1}, node="a", shutdown_grace_period=8.0)
    await a.start()
    job = await a.insert(Scripted.new({"do": "sleep", "seconds": 30}))
    await eventually(lambda: len(scripted.RUNS) == 1, timeout=5)
    await a.stop_queue("default")
    started = time.monotonic()
    assert await a.stop(grace=0.5) == 1
    assert time.monotonic() - started < 3
    assert str((await make_app().get_job(job.id)).state) == "available"


async def test_a_grown_thread_pool_starts_a_thread_for_a_new_call() -> None:
    from kerrera.queue import DaemonThreadPool

    pool = DaemonThreadPool(1)
    gates = [threading.Event() for _ in range(3)]
    try:
        first = pool.run(gates[0].wait)
        second = pool.run(gates[1].wait)  # queued behind the first
        await first[0]
        gates[0].set()
        await second[0]  # the one thread now runs the second call
        pool.size = 2
        third = pool.run(gates[2].wait)
        await asyncio.wait_for(asyncio.shield(third[0]), 2)
    finally:
        for gate in gates:
            gate.set()


async def test_a_new_queue_starts_only_once_its_heartbeat_is_written(
    make_app: Any, sql: Any
) -> None:
    a = make_app(queues={"default": 1}, node="a")
    await a.start()
    real, calls, beats = a._node.lifeline.beat, [0], []

    async def flaky() -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise psycopg.OperationalError("simulated: heartbeat lost")
        await real()
        beats.append(datetime.now(UTC).replace(tzinfo=None))

    a._node.lifeline.beat = flaky
    # The command's own refresh or the one its signal triggers meets the failed heartbeat
    # (whichever runs first); the other, or the retry, starts the queue afterwards.
    with contextlib.suppress(psycopg.OperationalError):
        await a.start_queue("extra", 1)
    await eventually(lambda: "extra" in a.producers and a.producers["extra"].started_at)
    producer = a.producers["extra"]
    assert calls[0] >= 2 and producer.started_at >= beats[0]  # started after a heartbeat
    assert sql("SELECT queue FROM kerrera_producers WHERE uuid = %s", (producer.uuid,)) == [
        ("extra",)
    ]


async def test_a_stopping_follower_leaves_no_lease_behind(make_app: Any, sql: Any) -> None:
    a = make_app(queues={"default": 1}, node="a")
    await a.start()
    # as if an election had committed just as the node stopped, unknown to it
    a._node.leadership._leading = False
    await a.stop()
    assert sql("SELECT count(*) FROM oban_peers WHERE name = 'Kerrera'") == [(0,)]
