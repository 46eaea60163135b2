"""Batches: callback jobs fire once each, inserted by the trigger in the transaction of
the ack (or close) that makes them due."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections import Counter
from typing import Any

import psycopg
import pytest
from conftest import eventually
from support.compose_workers import Callback, Member

from kerrera import Batch, ConfigError

ALL = ("attempted", "completed", "exhausted", "cancelled", "discarded", "retryable")


def every_callback(**args: Any) -> dict[str, Any]:
    return {name: Callback.new({"note": name, **args}) for name in ALL}


def fired(sql: Any, batch_id: str) -> Counter[str]:
    rows = sql(
        "SELECT meta->>'callback' FROM oban_jobs WHERE meta->>'batch_id' = %s "
        "AND meta ? 'callback'",
        (batch_id,),
    )
    return Counter(name for (name,) in rows)


def test_batch_is_checked() -> None:
    with pytest.raises(ConfigError, match="did you mean 'completed'"):
        Batch([Member.new({})], callbacks={"complete": Callback.new({})})
    with pytest.raises(ConfigError, match="needs jobs"):
        Batch([])
    with pytest.raises(ConfigError, match="batch_id"):
        Batch([Member.new({})], batch_id="has space")
    with pytest.raises(ConfigError, match="unique"):
        Batch([Member.new({}, unique=True)])
    b = Batch([Member.new({})], callbacks={"batch_completed": Callback.new({})}, batch_id="b1")
    assert list(b.callbacks) == ["completed"] and b.jobs[0].meta["batch_id"] == "b1"


async def test_all_complete(make_app: Any, sql: Any) -> None:
    app = make_app(queues={"batch": 5, "callbacks": 2})
    batch = Batch([Member.new({"n": i}) for i in range(20)], callbacks=every_callback(run=7))
    saved = await app.insert(batch)
    assert len(saved) == 20 and all(j.meta["batch_id"] == batch.batch_id for j in saved)
    with pytest.raises(ConfigError, match="exists already"):
        await app.insert(Batch([Member.new({})], batch_id=batch.batch_id))
    await app.start()
    await eventually(
        lambda: fired(sql, batch.batch_id) == Counter(["attempted", "completed", "exhausted"])
    )
    await eventually(
        lambda: sql("SELECT count(*) FROM oban_jobs WHERE state <> 'completed'") == [(0,)]
    )
    (args,) = sql("SELECT args FROM oban_jobs WHERE meta->>'callback' = 'completed'")[0]
    assert args["batch_id"] == batch.batch_id and args["run"] == 7 and args["note"] == "completed"
    assert args["counts"] == {
        "total": 20,
        "attempted": 20,
        "completed": 20,
        "cancelled": 0,
        "discarded": 0,
    }
    status = await app.batch(batch.batch_id).status()
    assert (status.total, status.completed, status.finished) == (20, 20, True)
    assert sorted(status.fired) == ["attempted", "completed", "exhausted"]


async def test_failures_fire_their_callbacks_once(make_app: Any, sql: Any) -> None:
    app = make_app(queues={"batch": 5, "callbacks": 2})
    jobs = [Member.new({"n": i}) for i in range(6)]
    jobs += [Member.new({"cancel": True}), Member.new({"cancel": True})]
    jobs += [Member.new({"fail_until": 9}), Member.new({"fail_until": 9})]  # discarded
    jobs += [Member.new({"fail_until": 2})]  # retryable once, then completed
    batch = Batch(jobs, callbacks=every_callback())
    await app.insert(batch)
    await app.start()
    expected = Counter(["attempted", "exhausted", "cancelled", "discarded", "retryable"])
    await eventually(lambda: fired(sql, batch.batch_id) == expected)
    status = await app.batch(batch.batch_id).status()
    assert (status.completed, status.cancelled, status.discarded) == (7, 2, 2)
    assert status.attempted == 11
    await asyncio.sleep(0.3)  # (nothing more is coming: a wrong extra would show here)
    assert fired(sql, batch.batch_id) == expected


async def test_open_batch_waits_for_close(make_app: Any, sql: Any) -> None:
    app = make_app(queues={"batch": 5, "callbacks": 2})
    batch = Batch([Member.new({"n": 0})], callbacks={"completed": Callback.new({})}, open=True)
    await app.insert(batch)
    await app.start()
    handle = app.batch(batch.batch_id)
    await eventually(
        lambda: sql("SELECT count(*) FROM oban_jobs WHERE state = 'completed'") == [(1,)]
    )
    assert fired(sql, batch.batch_id) == Counter()  # open: more may come
    more = await handle.append([Member.new({"n": i}) for i in range(1, 4)])
    assert [j.meta["batch_id"] for j in more] == [batch.batch_id] * 3
    await eventually(
        lambda: sql("SELECT count(*) FROM oban_jobs WHERE state = 'completed'") == [(4,)]
    )
    assert fired(sql, batch.batch_id) == Counter()
    await handle.close()  # everything is done already: it fires now
    assert fired(sql, batch.batch_id) == Counter(["completed"])
    await handle.close()
    assert fired(sql, batch.batch_id) == Counter(["completed"])
    with pytest.raises(ConfigError, match="closed"):
        await handle.append([Member.new({})])
    assert (await handle.status()).total == 4
    with pytest.raises(LookupError):
        await app.batch("unknown").close()


async def test_an_empty_open_batch_fires_on_close(make_app: Any, sql: Any) -> None:
    app = make_app()
    batch = Batch(callbacks={"exhausted": Callback.new({})}, open=True)
    await app.insert(batch)
    assert fired(sql, batch.batch_id) == Counter()
    await app.batch(batch.batch_id).close()
    assert fired(sql, batch.batch_id) == Counter(["exhausted"])


async def test_two_last_acks_at_once_fire_once(
    make_app: Any, sql: Any, dsn: str, prefix: str
) -> None:
    """Two transactions finish the last two jobs at the same moment: the second waits on
    the batch's row, then sees the first's counts, so exactly one callback is inserted."""
    app = make_app()
    batch = Batch([Member.new({}), Member.new({})], callbacks={"completed": Callback.new({})})
    ids = [j.id for j in await app.insert(batch)]
    sql(
        "UPDATE oban_jobs SET state = 'executing', attempt = 1, "
        "attempted_at = timezone('UTC', now()) WHERE id = ANY(%s)",
        (ids,),
    )
    first_done = threading.Event()

    def ack(job_id: int, wait_for: threading.Event | None) -> None:
        with psycopg.connect(dsn) as conn:
            conn.execute(f'SET search_path TO "{prefix}"')
            conn.execute("UPDATE oban_jobs SET state = 'completed' WHERE id = %s", (job_id,))
            if wait_for is None:
                first_done.set()
                conn.execute("SELECT pg_sleep(0.3)")  # the other one is blocked meanwhile
            conn.commit()

    await asyncio.gather(
        asyncio.to_thread(ack, ids[0], None),
        asyncio.to_thread(lambda: (first_done.wait(5), ack(ids[1], first_done))),
    )
    assert fired(sql, batch.batch_id) == Counter(["completed"])


async def test_two_nodes_many_members(make_app: Any, sql: Any) -> None:
    nodes = [make_app(queues={"batch": 8, "callbacks": 1}, node=f"n{i}") for i in range(2)]
    batches = [
        Batch([Member.new({"n": i}) for i in range(150)], callbacks=every_callback())
        for _ in range(3)
    ]
    for batch in batches:
        await nodes[0].insert(batch)
    for node in nodes:
        await node.start()
    for batch in batches:
        await eventually(
            lambda b=batch: (
                fired(sql, b.batch_id) == Counter(["attempted", "completed", "exhausted"])
            ),
            timeout=30,
        )
    assert sql("SELECT count(DISTINCT attempted_by[1]) FROM oban_jobs") == [(2,)]
    await asyncio.sleep(0.3)  # shows that nothing more comes: a doubled callback would
    for batch in batches:
        assert fired(sql, batch.batch_id) == Counter(["attempted", "completed", "exhausted"])


async def test_deleted_members_leave_the_count(make_app: Any, sql: Any) -> None:
    app = make_app(queues={"batch": 5, "callbacks": 1})
    batch = Batch(
        [Member.new({"n": 0}), Member.new({"n": 1}, schedule_in=3600)],
        callbacks={"completed": Callback.new({})},
    )
    saved = await app.insert(batch)
    await app.start()
    await eventually(
        lambda: sql("SELECT count(*) FROM oban_jobs WHERE state = 'completed'") == [(1,)]
    )
    assert fired(sql, batch.batch_id) == Counter()
    await app.delete_job(saved[1].id)  # the one left: the rest are all completed now
    assert fired(sql, batch.batch_id) == Counter(["completed"])


DOOMED_RUNNING = (
    "SELECT count(*) FROM oban_jobs WHERE state = 'executing' AND attempted_by[1] = 'doomed'"
)
FAST_LIFELINE = ("--heartbeat-interval", "0.2", "--producer-ttl", "2", "--rescue-interval", "0.2")


async def test_kill_9_of_a_node_midway_fires_each_callback_once(
    start_node: Any, make_app: Any, sql: Any
) -> None:
    """The node running half the batch dies (kill -9) with members executing: the
    lifeline of the survivor rescues them, and every callback still fires exactly once."""
    doomed = start_node(
        name="doomed",
        queues="batch:4,callbacks:1",
        extra=("--module", "support.compose_workers", *FAST_LIFELINE),
    )
    survivor = make_app(
        queues={"batch": 4, "callbacks": 1}, node="survivor",
        heartbeat_interval=0.2, producer_ttl=2.0, rescue_interval=0.2,
    )  # fmt: skip
    batch = Batch(
        [Member.new({"n": i, "sleep": 0.1}) for i in range(80)], callbacks=every_callback()
    )
    await survivor.insert(batch)
    await survivor.start()
    await eventually(lambda: sql(DOOMED_RUNNING)[0][0] >= 2)
    doomed.proc.send_signal(signal.SIGKILL)
    doomed.proc.wait(timeout=10)
    await eventually(
        lambda: fired(sql, batch.batch_id) == Counter(["attempted", "completed", "exhausted"]),
        timeout=60,
    )
    assert sql("SELECT count(*) FROM oban_jobs WHERE meta ? 'rescued'")[0][0] >= 2
    status = await survivor.batch(batch.batch_id).status()
    assert (status.completed, status.attempted, status.total) == (80, 80, 80)
    await asyncio.sleep(0.3)  # shows that nothing more comes: a doubled callback would
    assert fired(sql, batch.batch_id) == Counter(["attempted", "completed", "exhausted"])


async def test_sync_insert_on_the_callers_transaction(
    make_app: Any, sql: Any, dsn: str, prefix: str
) -> None:
    app = make_app()

    def insert(commit: bool, batch_id: str) -> None:
        with psycopg.connect(dsn) as conn:
            conn.execute(f'SET search_path TO "{prefix}"')
            app.sync.insert(Batch([Member.new({})], batch_id=batch_id), conn=conn)
            if commit:
                conn.commit()
            else:
                conn.rollback()

    await asyncio.to_thread(insert, False, "gone")
    await asyncio.to_thread(insert, True, "kept")
    assert sql("SELECT batch_id, total FROM kerrera_batches") == [("kept", 1)]
    assert sql("SELECT meta->>'batch_id' FROM oban_jobs") == [("kept",)]
    with pytest.raises(ConfigError, match="testing mode 'inline'"):
        await make_app(testing="inline").insert(Batch([Member.new({})]))
