"""Inserting: alone, in bulk, scheduled, and inside the caller's transaction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from support.scripted import Scripted

from kerrera import ConfigError, Job, JobState, Kerrera


async def test_insert_returns_the_saved_row(make_app: Any) -> None:
    app = make_app()
    job = await app.insert(
        Scripted.new({"n": 1}, priority=3, tags=[" Audio", "audio", "Rig"], meta={"source": "api"})
    )
    assert job.id is not None and job.state is JobState.AVAILABLE
    assert job.worker == "support.scripted.Scripted" and job.queue == "default"
    assert job.args == {"n": 1} and job.priority == 3 and job.max_attempts == 3
    assert job.tags == ["audio", "rig"] and job.meta == {"source": "api"}
    assert job.inserted_at is not None and job.inserted_at.tzinfo is None
    assert await app.get_job(job.id) == job


async def test_insert_all_keeps_order_and_uses_one_statement_per_batch(
    make_app: Any, sql: Any
) -> None:
    app = make_app()
    jobs = await app.insert_all([Scripted.new({"n": i}) for i in range(12_000)])
    assert [j.args["n"] for j in jobs] == list(range(12_000))
    assert [j.id for j in jobs] == sorted(j.id for j in jobs)
    assert sql("SELECT count(*) FROM oban_jobs")[0][0] == 12_000


async def test_schedule_in_and_scheduled_at(make_app: Any) -> None:
    app = make_app()
    later = await app.insert(Scripted.new({}, schedule_in=60))
    assert later.state is JobState.SCHEDULED
    assert 55 < (later.scheduled_at - later.inserted_at).total_seconds() <= 61
    at = datetime.now(UTC) + timedelta(hours=1)
    fixed = await app.insert(Scripted.new({}, scheduled_at=at))
    assert fixed.state is JobState.SCHEDULED
    assert abs(fixed.scheduled_at - at.replace(tzinfo=None)) < timedelta(milliseconds=1)
    past = await app.insert(Scripted.new({}, scheduled_at=datetime(2020, 1, 1)))
    assert past.state is JobState.AVAILABLE


async def test_insert_commits_and_rolls_back_with_the_callers_transaction(
    make_app: Any, dsn: str, sql: Any
) -> None:
    app = make_app()
    await app.migrate()
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        async with conn.transaction():
            kept = await app.insert(Scripted.new({"t": "commit"}), conn=conn)
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await app.insert(Scripted.new({"t": "rollback"}), conn=conn)
                raise RuntimeError("the caller's work failed")
    rows = sql("SELECT id, args->>'t' FROM oban_jobs")
    assert rows == [(kept.id, "commit")]


async def test_insert_works_on_a_connection_with_another_row_factory(
    make_app: Any, dsn: str
) -> None:
    from psycopg.rows import dict_row

    app = make_app()
    await app.migrate()
    async with await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row) as conn:
        one = await app.insert(Scripted.new({"n": 1}), conn=conn)
        many = await app.insert_all([Scripted.new({"n": i}) for i in range(300)], conn=conn)
    with psycopg.connect(dsn, row_factory=dict_row) as sync_conn:
        sync_one = Kerrera(dsn, prefix=app.config.prefix).sync.insert(
            Scripted.new({}), conn=sync_conn
        )
    assert isinstance(one.id, int) and len(many) == 300 and isinstance(sync_one.id, int)
    assert (await app.get_job(many[-1].id)).args == {"n": 299}


async def test_transactional_insert_is_invisible_until_commit(make_app: Any, dsn: str) -> None:
    app = make_app()
    await app.migrate()
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        job = await app.insert(Scripted.new({}), conn=conn)  # implicit transaction open
        assert await app.get_job(job.id) is None
        await conn.commit()
    assert await app.get_job(job.id) is not None


def test_sync_api_inserts_without_an_event_loop(dsn: str, prefix: str, sql: Any) -> None:
    app = Kerrera(dsn, prefix=prefix)
    job = app.sync.insert(Scripted.new({"via": "sync"}))
    assert app.sync.get_job(job.id).args == {"via": "sync"}
    with psycopg.connect(dsn) as conn:
        app.sync.insert(Scripted.new({"via": "rolled back"}), conn=conn)
        conn.rollback()
        kept = app.sync.insert(Scripted.new({"via": "committed"}), conn=conn)
        conn.commit()
    bulk = app.sync.insert_all([Scripted.new({"i": i}) for i in range(50)])
    assert len(bulk) == 50
    vias = sorted(r[0] for r in sql("SELECT args->>'via' FROM oban_jobs WHERE args ? 'via'"))
    assert vias == ["committed", "sync"]
    assert app.sync.cancel_job(kept.id).state is JobState.CANCELLED
    assert app.sync.retry_job([kept.id])[0].state is JobState.AVAILABLE
    assert app.sync.delete_job(kept.id).id == kept.id
    assert app.sync.get_job(kept.id) is None
    app.sync.close()


async def test_invalid_jobs_are_refused_before_the_database(make_app: Any) -> None:
    app = make_app()
    with pytest.raises(ConfigError, match="'worker'"):
        await app.insert(Job(worker=""))
    with pytest.raises(ConfigError, match="Job objects"):
        await app.insert_all([{"worker": "x"}])  # type: ignore[list-item]
    assert await app.insert_all([]) == []


async def test_bulk_copy_keeps_awkward_values_exactly(make_app: Any, sql: Any) -> None:
    awkward = {"text": 'tab\there\nnew "line" \\ back\\slash \r', "emoji": "🎧", "n": None}
    tags = ['a "quoted" tag', "back\\slash", "comma,tag"]
    jobs = [Scripted.new({**awkward, "i": i}, tags=tags, meta={"m": "\t"}) for i in range(300)]
    app = make_app()
    saved = await app.insert_all(jobs)
    rows = sql(
        "SELECT id, args, tags, meta, state::text, inserted_at, scheduled_at "
        "FROM oban_jobs ORDER BY id"
    )
    assert [r[0] for r in rows] == [j.id for j in saved]
    assert all(r[1] == {**awkward, "i": i} for i, r in enumerate(rows))
    assert all(r[2] == [t.lower() for t in tags] and r[3] == {"m": "\t"} for r in rows)
    assert all(r[4] == "available" for r in rows)
    assert saved[0].inserted_at == rows[0][5] and saved[0].scheduled_at == rows[0][6]


async def test_mixed_bulk_batch_keeps_input_order(make_app: Any) -> None:
    app = make_app()
    jobs = [Scripted.new({"i": i}, schedule_in=60 if i % 7 == 0 else None) for i in range(600)]
    saved = await app.insert_all(jobs)
    assert [j.args["i"] for j in saved] == list(range(600))
    assert all((j.state is JobState.SCHEDULED) == (j.args["i"] % 7 == 0) for j in saved)
    for job in saved[:10]:
        assert (await app.get_job(job.id)).args == job.args


async def test_bulk_copy_rolls_back_with_the_callers_transaction(
    make_app: Any, dsn: str, sql: Any
) -> None:
    app = make_app()
    await app.migrate()
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await app.insert_all([Scripted.new({"i": i}) for i in range(500)], conn=conn)
                raise RuntimeError("abort")
        async with conn.transaction():
            kept = await app.insert_all([Scripted.new({"i": i}) for i in range(500)], conn=conn)
    assert sql("SELECT count(*) FROM oban_jobs")[0][0] == 500
    assert sorted(r[0] for r in sql("SELECT id FROM oban_jobs")) == [j.id for j in kept]
