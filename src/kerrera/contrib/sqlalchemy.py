"""Insert jobs inside a SQLAlchemy transaction: a `Session`, an `AsyncSession`, or their
`Connection`s. The jobs commit or roll back with the session's own writes.

The jobs go through the session's current database connection, so SQLAlchemy has to
talk to PostgreSQL with psycopg 3: an engine URL `postgresql+psycopg://...` (for
`create_engine` and `create_async_engine` alike). A bare `postgresql://` URL means
psycopg2 to SQLAlchemy, which is refused with an error that says so.

Example:
    from kerrera.contrib.sqlalchemy import insert

    with Session(engine) as session, session.begin():
        session.add(Order(id=7, total=120))
        insert(session, SendReceipt.new({"order": 7}), app=app)
    # committed: the order and its job; an exception in the block would drop both
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from kerrera import ConfigError, Job, Kerrera, current_app

if TYPE_CHECKING:
    from sqlalchemy.engine import Dialect
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

__all__ = ["ainsert", "ainsert_all", "insert", "insert_all"]

_C = TypeVar("_C", psycopg.Connection[Any], psycopg.AsyncConnection[Any])


def insert(session: Session | Connection, job: Job, *, app: Kerrera | None = None) -> Job:
    """Insert `job` in the transaction of `session` (a `Session` or a `Connection`) and
    return it saved; it commits or rolls back with the session. `app` defaults to
    `kerrera.current_app()` (the instance started in this context).

    Example:
        with Session(engine) as session:
            session.add(user)
            session.flush()  # user.id is known from here on
            insert(session, Welcome.new({"user": user.id}), app=app)
            session.commit()
    """
    return insert_all(session, [job], app=app)[0]


def insert_all(
    session: Session | Connection, jobs: Iterable[Job], *, app: Kerrera | None = None
) -> list[Job]:
    """Insert many jobs in the transaction of `session`, one statement per batch; returns
    them saved, in order (a unique job that met its duplicate comes back as that one,
    with `conflict=True`).

    Example:
        with Session(engine) as session, session.begin():
            saved = insert_all(session, [Thumb.new({"photo": p}) for p in ids], app=app)
    """
    batch = list(jobs)
    if not batch:
        return []
    kerrera = _app_for(app)
    conn = _sync_connection(session)
    raw = _psycopg_of(conn.connection.driver_connection, conn.dialect, psycopg.Connection)
    return kerrera.sync.insert_all(batch, conn=raw)


async def ainsert(
    session: AsyncSession | AsyncConnection, job: Job, *, app: Kerrera | None = None
) -> Job:
    """`insert` for an `AsyncSession` or `AsyncConnection` (engine from
    `create_async_engine("postgresql+psycopg://...")`).

    Example:
        async with AsyncSession(engine) as session, session.begin():
            session.add(Track(id=7))
            await ainsert(session, separate_stems.new({"track_id": 7}))
    """
    return (await ainsert_all(session, [job], app=app))[0]


async def ainsert_all(
    session: AsyncSession | AsyncConnection, jobs: Iterable[Job], *, app: Kerrera | None = None
) -> list[Job]:
    """`insert_all` for an `AsyncSession` or `AsyncConnection`.

    Example:
        async with AsyncSession(engine) as session, session.begin():
            await ainsert_all(session, [Mailer.new({"to": a}) for a in addresses])
    """
    batch = list(jobs)
    if not batch:
        return []
    kerrera = _app_for(app)
    conn = await _async_connection(session)
    fairy = await conn.get_raw_connection()
    raw = _psycopg_of(fairy.driver_connection, conn.dialect, psycopg.AsyncConnection)
    return await kerrera.insert_all(batch, conn=raw)


def _app_for(app: Kerrera | None) -> Kerrera:
    if app is not None:
        return app
    try:
        return current_app()
    except RuntimeError:
        raise RuntimeError(
            "no Kerrera instance to insert with: pass app=..., or call it where a Kerrera "
            "instance was started (inside a job, or after `await app.start()`)"
        ) from None


def _sync_connection(session: Session | Connection) -> Connection:
    if isinstance(session, Session):
        return session.connection()  # begins the session's transaction if needed
    if isinstance(session, Connection):
        # Our statements bypass SQLAlchemy: unless its transaction is begun, its
        # `commit()` would be a no-op and the jobs would vanish with the connection.
        if not session.in_transaction():
            session.begin()
        return session
    raise TypeError(_wrong_kind(session, "a Session or a Connection", "ainsert"))


async def _async_connection(session: AsyncSession | AsyncConnection) -> AsyncConnection:
    # Imported here: sqlalchemy.ext.asyncio needs greenlet, which sync users may lack.
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

    if isinstance(session, AsyncSession):
        return await session.connection()
    if isinstance(session, AsyncConnection):
        if not session.in_transaction():  # as in _sync_connection
            await session.begin()
        return session
    raise TypeError(_wrong_kind(session, "an AsyncSession or an AsyncConnection", "insert"))


def _wrong_kind(given: object, expected: str, other: str) -> str:
    name = type(given).__qualname__
    return f"expected {expected}, got {name}; for the other kind use {other}()"


def _psycopg_of(driver_conn: Any, dialect: Dialect, kind: type[_C]) -> _C:
    """The psycopg 3 connection under SQLAlchemy's, or a ConfigError naming the driver."""
    if isinstance(driver_conn, kind):
        return driver_conn
    if isinstance(driver_conn, psycopg.Connection | psycopg.AsyncConnection):
        # e.g. `AsyncSession.sync_session` given to insert(): its connection is async.
        other = "ainsert" if kind is psycopg.Connection else "insert"
        raise TypeError(f"this session's connection is {type(driver_conn).__name__}: use {other}()")
    used = f"{dialect.name}+{dialect.driver}"
    dbapi = f"{type(driver_conn).__module__}.{type(driver_conn).__qualname__}"
    raise ConfigError(
        f"kerrera.contrib.sqlalchemy works with the psycopg 3 driver only, but this engine "
        f"uses {used!r} (connection {dbapi}); create the engine with a "
        f"'postgresql+psycopg://' URL (SQLAlchemy reads a bare 'postgresql://' as psycopg2)"
    )
