"""Unique jobs: duplicates are refused by the database, across transactions and batches."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import psycopg
import pytest
from support.scripted import Scripted

from kerrera import ConfigError, JobState, Unique


async def test_a_duplicate_returns_the_existing_job_marked_as_a_conflict(make_app: Any) -> None:
    app = make_app()
    first = await app.insert(Scripted.new({"n": 1}, unique=True))
    again = await app.insert(Scripted.new({"n": 1}, unique=True))
    other = await app.insert(Scripted.new({"n": 2}, unique=True))
    assert not first.conflict and again.conflict and not other.conflict
    assert again.id == first.id and other.id != first.id
    assert first.meta["uniq_key"] == again.meta["uniq_key"]


async def test_a_plain_row_of_the_same_job_counts_as_a_duplicate(make_app: Any) -> None:
    # As Oban counts it: any row in a counted state, whoever inserted it and how.
    app = make_app()
    plain = await app.insert(Scripted.new({"p": 1}))
    unique = await app.insert(Scripted.new({"p": 1}, unique=True))
    assert unique.conflict and unique.id == plain.id


async def test_fields_and_keys_choose_what_counts(make_app: Any) -> None:
    app = make_app()
    by_user = Unique(keys=["user"], period=None)
    a = await app.insert(Scripted.new({"user": 1, "noise": "x"}, unique=by_user))
    b = await app.insert(Scripted.new({"user": 1, "noise": "y"}, unique=by_user))
    assert b.conflict and b.id == a.id
    other_queue = await app.insert(Scripted.new({"user": 1}, queue="q2", unique=by_user))
    assert not other_queue.conflict
    only_worker = Unique(fields=["worker"], period=None)
    c = await app.insert(Scripted.new({"n": 1}, unique=only_worker))
    d = await app.insert(Scripted.new({"n": 99}, queue="q3", unique=only_worker))
    assert d.conflict and d.id == c.id
    with_meta = Unique(fields=["worker", "meta"], keys=["tenant"])
    e = await app.insert(Scripted.new({}, meta={"tenant": "a", "x": 1}, unique=with_meta))
    f = await app.insert(Scripted.new({}, meta={"tenant": "b"}, unique=with_meta))
    g = await app.insert(Scripted.new({}, meta={"tenant": "a", "x": 2}, unique=with_meta))
    assert not f.conflict and g.conflict and g.id == e.id


async def test_states_decide_whether_a_finished_job_blocks(make_app: Any, sql: Any) -> None:
    app = make_app()
    counting_done = Unique(period=None)  # default states include completed
    ignoring_done = Unique(period=None, states=["available", "scheduled", "executing", "retryable"])
    a = await app.insert(Scripted.new({"k": "a"}, unique=counting_done))
    b = await app.insert(Scripted.new({"k": "b"}, unique=ignoring_done))
    sql(
        "UPDATE oban_jobs SET state = 'completed', completed_at = now() WHERE id IN (%s, %s)",
        (a.id, b.id),
    )
    assert (await app.insert(Scripted.new({"k": "a"}, unique=counting_done))).conflict
    again = await app.insert(Scripted.new({"k": "b"}, unique=ignoring_done))
    assert not again.conflict and again.id != b.id
    # discarded never counts by default
    sql("UPDATE oban_jobs SET state = 'discarded', discarded_at = now() WHERE id = %s", (a.id,))
    assert not (await app.insert(Scripted.new({"k": "a"}, unique=counting_done))).conflict


async def test_period_expires_an_old_holder(make_app: Any, sql: Any) -> None:
    app = make_app()
    spec = Unique(period=60)
    old = await app.insert(Scripted.new({"p": 1}, unique=spec))
    assert (await app.insert(Scripted.new({"p": 1}, unique=spec))).conflict
    sql(
        "UPDATE oban_jobs SET inserted_at = inserted_at - interval '61 seconds' WHERE id = %s",
        (old.id,),
    )
    new = await app.insert(Scripted.new({"p": 1}, unique=spec))
    assert not new.conflict and new.id != old.id
    (meta,) = sql("SELECT meta FROM oban_jobs WHERE id = %s", (old.id,))[0]
    assert "uniq_key" not in meta and meta["uniq_retired"] == new.meta["uniq_key"]
    # by scheduled_at: compared with the new job's scheduled time
    by_time = Unique(period=300, timestamp="scheduled_at")
    s1 = await app.insert(Scripted.new({"t": 1}, schedule_in=0, unique=by_time))
    assert (await app.insert(Scripted.new({"t": 1}, schedule_in=200, unique=by_time))).conflict
    s3 = await app.insert(Scripted.new({"t": 1}, schedule_in=400, unique=by_time))
    assert not s3.conflict and s3.id != s1.id


async def test_replace_overwrites_a_waiting_job_only(make_app: Any, sql: Any) -> None:
    app = make_app()
    spec = Unique(period=None, fields=["worker"], replace=["args", "scheduled_at", "priority"])
    first = await app.insert(Scripted.new({"v": 1}, schedule_in=3600, unique=spec))
    second = await app.insert(Scripted.new({"v": 2}, priority=5, unique=spec))
    assert second.conflict and second.id == first.id
    assert second.args == {"v": 2} and second.priority == 5
    assert second.state is JobState.AVAILABLE  # rescheduled to now
    sql("UPDATE oban_jobs SET state = 'executing', attempt = 1 WHERE id = %s", (first.id,))
    third = await app.insert(Scripted.new({"v": 3}, unique=spec))
    assert third.conflict and third.args == {"v": 2}  # executing: left alone
    per_state = Unique(period=None, fields=["worker"], replace={"executing": ["meta"]})
    fourth = await app.insert(Scripted.new({}, meta={"note": "hi"}, unique=per_state))
    assert fourth.conflict and fourth.meta["note"] == "hi"


async def test_insert_all_dedupes_within_and_across_batches(make_app: Any, sql: Any) -> None:
    app = make_app()
    spec = Unique(period=None)
    jobs = [Scripted.new({"n": i % 5}, unique=spec) for i in range(20)]
    jobs += [Scripted.new({"plain": i}) for i in range(3)]
    saved = await app.insert_all(jobs)
    assert [j.conflict for j in saved[:5]] == [False] * 5
    assert all(j.conflict for j in saved[5:20])
    assert [j.id for j in saved[5:10]] == [j.id for j in saved[:5]]
    assert sql("SELECT count(*) FROM oban_jobs")[0][0] == 8
    again = await app.insert_all([Scripted.new({"n": i}, unique=spec) for i in range(7)])
    assert [j.conflict for j in again] == [True] * 5 + [False] * 2


async def test_sixty_four_concurrent_inserters_get_one_row(
    make_app: Any, dsn: str, prefix: str, sql: Any
) -> None:
    app = make_app()
    await app.migrate()
    start = asyncio.Event()

    async def insert_in_own_transaction(i: int) -> Any:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            await start.wait()
            async with conn.transaction():
                job = await app.insert(Scripted.new({"same": True}, unique=True), conn=conn)
                await asyncio.sleep(0.01 * (i % 4))  # hold the transaction open a little
            return job

    tasks = [asyncio.create_task(insert_in_own_transaction(i)) for i in range(64)]
    await asyncio.sleep(0.5)
    start.set()
    results = await asyncio.gather(*tasks)
    assert sql("SELECT count(*) FROM oban_jobs")[0][0] == 1
    assert sum(not j.conflict for j in results) == 1
    assert len({j.id for j in results}) == 1


async def test_a_rolled_back_insert_leaves_the_key_free(make_app: Any, dsn: str) -> None:
    app = make_app()
    await app.migrate()
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await app.insert(Scripted.new({"r": 1}, unique=True), conn=conn)
                raise RuntimeError("roll back")
    assert not (await app.insert(Scripted.new({"r": 1}, unique=True))).conflict


def test_sync_insert_is_unique_too(make_app: Any) -> None:
    app = make_app()
    a = app.sync.insert(Scripted.new({"s": 1}, unique=True))
    b = app.sync.insert(Scripted.new({"s": 1}, unique=True))
    assert b.conflict and b.id == a.id


async def test_retrying_a_finished_duplicate_gives_its_key_up(make_app: Any, sql: Any) -> None:
    app = make_app()
    spec = Unique(period=None, states=["available", "scheduled", "executing", "retryable"])
    a = await app.insert(Scripted.new({"x": 1}, unique=spec))
    sql("UPDATE oban_jobs SET state = 'discarded', discarded_at = now() WHERE id = %s", (a.id,))
    b = await app.insert(Scripted.new({"x": 1}, unique=spec))
    assert not b.conflict
    retried = await app.retry_job(a.id)
    assert retried.state is JobState.AVAILABLE and "uniq_key" not in retried.meta


async def test_unique_jobs_run_and_free_their_key_per_states(make_app: Any) -> None:
    app = make_app(queues={"default": 2})
    spec = Unique(period=None, states=["available", "scheduled", "executing", "retryable"])
    async with app:
        job = await app.insert(Scripted.new({"do": "ok"}, unique=spec))
        for _ in range(100):
            got = await app.get_job(job.id)
            if got.state is JobState.COMPLETED:
                break
            await asyncio.sleep(0.05)
        assert got.state is JobState.COMPLETED
        assert not (await app.insert(Scripted.new({"do": "ok"}, unique=spec))).conflict


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"period": 0}, "unique period"),
        ({"period": -1}, "unique period"),
        ({"fields": ["args", "nope"]}, "unique fields"),
        ({"fields": []}, "unique fields"),
        ({"states": ["available"]}, "must include scheduled, executing, retryable"),
        ({"timestamp": "attempted_at"}, "unique timestamp"),
        ({"replace": ["id"]}, "unique replace"),
        ({"replace": {"running": ["args"]}}, "unique replace"),
        ({"keys": "user"}, "unique keys"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_bad_unique_options_name_the_option(given: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Unique.coerce(given)


def test_coerce_forms() -> None:
    assert Unique.coerce(True) == Unique()
    assert Unique.coerce(300).period == 300
    assert Unique.coerce(math.inf).period is None
    assert Unique.coerce(False) is None and Unique.coerce(None) is None
    with pytest.raises(ConfigError, match="option 'unique'"):
        Unique.coerce("yes")
    assert Scripted.new({}, unique=False).unique is None
