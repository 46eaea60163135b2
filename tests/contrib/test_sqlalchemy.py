"""kerrera.contrib.sqlalchemy: jobs inserted in a Session / AsyncSession transaction commit
and roll back with the session's rows, on a real PostgreSQL through SQLAlchemy.

The model table and the jobs live in the test's own schema (a non-default prefix); the
sessions' connections never put that schema on their search_path.
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import eventually
from sqlalchemy import URL, Engine, create_engine, make_url, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from support import scripted
from support.scripted import Scripted

from kerrera import ConfigError, JobState, Kerrera
from kerrera.contrib.sqlalchemy import ainsert, ainsert_all, insert, insert_all


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    # "shop" is mapped to the test's schema by the engines' schema_translate_map.
    __table_args__ = ({"schema": "shop"},)
    id: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str]


def psycopg_url(dsn: str) -> URL:
    return make_url(dsn).set(drivername="postgresql+psycopg")


def in_schema(prefix: str) -> dict[str, Any]:
    return {"schema_translate_map": {"shop": prefix}}


@pytest.fixture
def app(dsn: str, prefix: str) -> Iterator[Kerrera]:
    """A Kerrera instance that only inserts, its schema migrated, with the orders table."""
    kerrera = Kerrera(dsn, prefix=prefix)
    kerrera.sync.migrate()
    setup = create_engine(psycopg_url(dsn), execution_options=in_schema(prefix))
    Base.metadata.create_all(setup)
    setup.dispose()
    yield kerrera
    kerrera.sync.close()


@pytest.fixture
def engine(dsn: str, prefix: str, app: Kerrera) -> Iterator[Engine]:
    sa_engine = create_engine(psycopg_url(dsn), execution_options=in_schema(prefix))
    yield sa_engine
    sa_engine.dispose()


@pytest.fixture
async def aengine(dsn: str, prefix: str, app: Kerrera) -> AsyncIterator[Any]:
    # (AsyncSession needs greenlet: the test extras install sqlalchemy[asyncio], so a
    # missing greenlet fails these tests rather than skipping them.)
    sa_engine = create_async_engine(psycopg_url(dsn), execution_options=in_schema(prefix))
    yield sa_engine
    await sa_engine.dispose()


def rows(sql: Any) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(orders, jobs) as stored: (id, item) and (id, args)."""
    orders = sql("SELECT id, item FROM orders ORDER BY id")
    jobs = sql("SELECT id, args FROM oban_jobs ORDER BY id")
    return orders, jobs


# -- Session and Connection ---------------------------------------------------------------


def test_a_session_rolls_back_and_commits_its_jobs_with_its_rows(
    engine: Engine, app: Kerrera, sql: Any
) -> None:
    with Session(engine) as session:
        session.add(Order(id=1, item="dropped"))
        session.flush()
        dropped = insert(session, Scripted.new({"order": 1}), app=app)
        assert dropped.id is not None and dropped.state is JobState.AVAILABLE
        session.rollback()
        session.add(Order(id=2, item="kept"))
        session.flush()
        kept = insert(session, Scripted.new({"order": 2}), app=app)
        session.commit()
    assert rows(sql) == ([(2, "kept")], [(kept.id, {"order": 2})])


def test_session_begin_blocks_commit_or_roll_back_the_job(
    engine: Engine, app: Kerrera, sql: Any
) -> None:
    new_session = sessionmaker(engine)
    with pytest.raises(RuntimeError, match="declined"), new_session.begin() as session:
        session.add(Order(id=1, item="refused"))
        insert(session, Scripted.new({"order": 1}), app=app)
        raise RuntimeError("payment declined")
    with Session(engine) as session, session.begin():
        session.add(Order(id=2, item="paid"))
        paid = insert(session, Scripted.new({"order": 2}), app=app)
    assert rows(sql) == ([(2, "paid")], [(paid.id, {"order": 2})])


def test_a_connection_takes_part_too_even_before_its_transaction_began(
    engine: Engine, app: Kerrera, sql: Any
) -> None:
    with engine.connect() as conn:  # nothing run yet: SQLAlchemy has not begun
        first = insert(conn, Scripted.new({"n": 1}), app=app)
        conn.commit()
        insert(conn, Scripted.new({"n": 2}), app=app)
        conn.rollback()
    with engine.begin() as conn:
        conn.execute(Order.__table__.insert().values(id=3, item="with a job"))
        third = insert(conn, Scripted.new({"n": 3}), app=app)
    assert rows(sql) == ([(3, "with a job")], [(first.id, {"n": 1}), (third.id, {"n": 3})])


def test_a_savepoint_holds_its_jobs(engine: Engine, app: Kerrera, sql: Any) -> None:
    with Session(engine) as session, session.begin():
        kept = insert(session, Scripted.new({"n": 1}), app=app)
        savepoint = session.begin_nested()
        insert(session, Scripted.new({"n": 2}), app=app)
        savepoint.rollback()
        with session.begin_nested():
            also = insert(session, Scripted.new({"n": 3}), app=app)
    assert rows(sql)[1] == [(kept.id, {"n": 1}), (also.id, {"n": 3})]


def test_insert_all_returns_the_saved_jobs_in_order(engine: Engine, app: Kerrera) -> None:
    with Session(engine) as session:
        assert insert_all(session, [], app=app) == []
        assert not session.in_transaction()  # nothing to insert: no transaction begun
    with Session(engine) as session, session.begin():
        saved = insert_all(
            session,
            [Scripted.new({"n": 1}), Scripted.new({"n": 2}, schedule_in=60, queue="later")],
            app=app,
        )
    assert [j.args["n"] for j in saved] == [1, 2]
    assert all(j.id is not None for j in saved) and saved[0].id < saved[1].id
    assert [j.state for j in saved] == [JobState.AVAILABLE, JobState.SCHEDULED]
    assert app.sync.get_job(saved[1].id) == saved[1]


def test_the_sessions_search_path_does_not_matter(
    engine: Engine, app: Kerrera, prefix: str, sql: Any
) -> None:
    with Session(engine) as session, session.begin():
        session.execute(text("SET LOCAL search_path TO pg_catalog"))
        job = insert(session, Scripted.new({"n": 1}), app=app)
        path = session.execute(text("SHOW search_path")).scalar_one()
    assert prefix not in path
    assert sql("SELECT id FROM oban_jobs") == [(job.id,)]


def test_unique_jobs_conflict_across_sessions_and_leave_the_session_usable(
    engine: Engine, app: Kerrera, sql: Any
) -> None:
    with Session(engine) as session:
        first = insert(session, Scripted.new({"n": 1}, unique=True), app=app)
        again = insert(session, Scripted.new({"n": 1}, unique=True), app=app)
        assert again.conflict and again.id == first.id
        session.rollback()  # the holder goes with the transaction
    with Session(engine) as session, session.begin():
        fresh, twin = insert_all(session, [Scripted.new({"n": 1}, unique=True)] * 2, app=app)
        assert not fresh.conflict and fresh.id != first.id and twin.id == fresh.id
    with Session(engine) as session, session.begin():
        duplicate = insert(session, Scripted.new({"n": 1}, unique=True), app=app)
        session.add(Order(id=1, item="after the conflict"))  # the transaction is not aborted
    assert duplicate.conflict and duplicate.id == fresh.id
    assert rows(sql) == ([(1, "after the conflict")], [(fresh.id, {"n": 1})])


def test_another_driver_is_refused_naming_it_and_the_url_to_use(app: Kerrera) -> None:
    other = create_engine("sqlite://")  # a real engine whose DBAPI is not psycopg 3
    with Session(other) as session, pytest.raises(ConfigError) as refused:
        insert(session, Scripted.new({}), app=app)
    other.dispose()
    message = str(refused.value)
    assert "'sqlite+pysqlite'" in message and "sqlite3.Connection" in message
    assert "'postgresql+psycopg://'" in message


def test_without_app_and_none_started_the_error_says_what_to_do(engine: Engine) -> None:
    def attempt() -> None:
        with Session(engine) as session:
            insert(session, Scripted.new({}))

    with pytest.raises(RuntimeError, match=r"pass app=\.\.\."):
        contextvars.Context().run(attempt)  # a context where no app was started


async def test_committed_jobs_run_on_a_node_and_rolled_back_ones_never(
    engine: Engine, make_app: Any
) -> None:
    node = make_app(queues={"default": 2})
    await node.start()  # current_app() is this node from here on
    with Session(engine) as session:
        insert(session, Scripted.new({"do": "ok", "n": "rolled back"}))
        session.rollback()
        job = insert(session, Scripted.new({"do": "ok", "n": "committed"}))
        session.commit()

    async def completed() -> bool:
        found = await node.get_job(job.id)
        return found is not None and found.state is JobState.COMPLETED

    await eventually(completed)
    assert [args["n"] for _id, _attempt, args in scripted.RUNS] == ["committed"]


# -- AsyncSession and AsyncConnection ---------------------------------------------------


async def test_an_async_session_rolls_back_and_commits_its_jobs(
    aengine: Any, make_app: Any, sql: Any
) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    app = make_app()
    async with AsyncSession(aengine) as session:
        session.add(Order(id=1, item="dropped"))
        await session.flush()
        await ainsert(session, Scripted.new({"order": 1}), app=app)
        await session.rollback()
        session.add(Order(id=2, item="kept"))
        kept = await ainsert(session, Scripted.new({"order": 2}), app=app)
        await session.commit()
    assert rows(sql) == ([(2, "kept")], [(kept.id, {"order": 2})])


async def test_async_begin_blocks_and_connections(aengine: Any, make_app: Any, sql: Any) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    app = make_app()
    with pytest.raises(RuntimeError, match="declined"):
        async with AsyncSession(aengine) as session, session.begin():
            session.add(Order(id=1, item="refused"))
            await ainsert(session, Scripted.new({"order": 1}), app=app)
            raise RuntimeError("payment declined")
    async with aengine.connect() as conn:  # nothing run yet: SQLAlchemy has not begun
        kept = await ainsert(conn, Scripted.new({"order": 2}), app=app)
        await conn.commit()
        await ainsert(conn, Scripted.new({"order": 3}), app=app)
        await conn.rollback()
    async with aengine.begin() as conn:
        await conn.execute(text("SET LOCAL search_path TO pg_catalog"))
        await conn.execute(Order.__table__.insert().values(id=2, item="paid"))
        saved = await ainsert_all(conn, [Scripted.new({"n": 3}), Scripted.new({"n": 4})], app=app)
    assert [j.args for j in saved] == [{"n": 3}, {"n": 4}]
    assert rows(sql) == (
        [(2, "paid")],
        [(kept.id, {"order": 2}), (saved[0].id, {"n": 3}), (saved[1].id, {"n": 4})],
    )


async def test_async_unique_jobs_conflict(aengine: Any, make_app: Any) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    app = make_app()
    async with AsyncSession(aengine) as session, session.begin():
        first = await ainsert(session, Scripted.new({"n": 1}, unique=True), app=app)
    async with AsyncSession(aengine) as session, session.begin():
        again = await ainsert(session, Scripted.new({"n": 1}, unique=True), app=app)
        session.add(Order(id=1, item="after the conflict"))
    assert not first.conflict and again.conflict and again.id == first.id


async def test_a_large_async_batch_is_copied_inside_the_transaction(
    aengine: Any, make_app: Any, sql: Any
) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession

    app = make_app()
    batch = [Scripted.new({"n": i}) for i in range(250)]  # COPY from 200 jobs on
    async with AsyncSession(aengine) as session:
        assert len(await ainsert_all(session, batch, app=app)) == 250
        await session.rollback()
        saved = await ainsert_all(session, batch, app=app)
        await session.commit()
    assert [j.args["n"] for j in saved] == list(range(250))
    assert sql("SELECT min(id), max(id), count(*) FROM oban_jobs") == [
        (saved[0].id, saved[-1].id, 250)
    ]


class _AsyncpgConnection:
    """Stands in for asyncpg's connection (asyncpg is not installed with the tests)."""

    __module__ = "asyncpg.connection"


async def test_async_sessions_of_another_driver_or_kind_are_refused(
    aengine: Any, make_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

    app = make_app()
    async with AsyncSession(aengine) as session:
        with pytest.raises(TypeError, match=r"use ainsert\(\)"):
            insert(session, Scripted.new({}), app=app)
        with pytest.raises(TypeError, match=r"use ainsert\(\)"):
            await session.run_sync(lambda sync: insert(sync, Scripted.new({}), app=app))

    async def asyncpg_raw(self: AsyncConnection) -> Any:
        return SimpleNamespace(driver_connection=_AsyncpgConnection())

    monkeypatch.setattr(AsyncConnection, "get_raw_connection", asyncpg_raw)
    monkeypatch.setattr(aengine.dialect, "driver", "asyncpg")
    async with AsyncSession(aengine) as session:
        with pytest.raises(ConfigError) as refused:
            await ainsert(session, Scripted.new({}), app=app)
    message = str(refused.value)
    assert "'postgresql+asyncpg'" in message and "asyncpg.connection" in message
    assert "'postgresql+psycopg://'" in message
