"""The PostgreSQL engine for synchronous callers (Django, Flask, scripts): no event loop.

It runs the same named statements as the async engine, on the caller's `psycopg.Connection`
when given (so a job commits or rolls back with the caller's transaction), otherwise on a
small pool of its own, opened on first use. Its notifications go out as the async
engine's do: inside the statements, or (for an in-process notifier) handed to the app's
notifier, which delivers them on its own loop.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import tuple_row
from psycopg_pool import ConnectionPool

from kerrera import _json
from kerrera._job import Job
from kerrera.engine.base import QueueSignal
from kerrera.engine.inspect import SyncInspectQueries
from kerrera.engine.postgres import INSERT_BATCH, UNIQUE_RACE_ATTEMPTS
from kerrera.engine.statements import (
    Statements,
    flagged_job_row,
    in_transaction,
    insert_messages,
    insert_params,
    job_row,
    pkill_message,
    queue_state_params,
    saved_jobs,
    split_due,
)
from kerrera.engine.testing import SyncTestingQueries
from kerrera.engine.unique import insert_unique, unique_row

if TYPE_CHECKING:
    from kerrera.notifier.base import Message, Notifier

#: Finds the app's in-process notifier when there is something to deliver (None while
#: the app has none open: then nobody in this process listens).
NotifierRef = Callable[[], "Notifier | None"]


class SyncPostgresEngine(SyncTestingQueries, SyncInspectQueries):
    """Insert and manage jobs from synchronous code."""

    def __init__(
        self, dsn: str, prefix: str = "public", *, pool_size: int = 4,
        notifier: NotifierRef | None = None,
    ) -> None:  # fmt: skip
        """`notifier`: None when statements `pg_notify` themselves (the Postgres
        notifier); else where to find the in-process notifier that delivers instead."""
        self.sql = Statements(prefix)
        self.dsn = dsn
        self._notifier = notifier
        self._pool_size = pool_size
        self._pool: ConnectionPool[Any] | None = None
        self._lock = threading.Lock()

    @contextmanager
    def _connection(self, conn: Any) -> Iterator[psycopg.Connection[Any]]:
        if conn is not None:
            yield conn
            return
        with self._lock:  # threads of a web server may arrive together
            if self._pool is None:
                self._pool = ConnectionPool(
                    self.dsn, min_size=1, max_size=self._pool_size, open=True,
                    kwargs={"autocommit": True}, configure=_json.configure,
                    name=f"kerrera-sync-{self.sql.prefix}",
                )  # fmt: skip
            pool = self._pool
        with pool.connection() as own:
            yield own

    def close(self) -> None:
        """Close the pool (a later call opens a new one)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()

    def _rows(
        self, name: str, params: dict[str, Any], conn: Any = None, row_factory: Any = job_row
    ) -> list[Any]:
        with self._connection(conn) as c, c.cursor(row_factory=row_factory) as cur:
            cur.execute(self.sql[name], params)
            return cur.fetchall()

    def _inline(self, channel: str) -> str | None:
        """The channel for a statement's own `pg_notify`, or None when an in-process
        notifier delivers (see `PostgresEngine._inline`)."""
        return channel if self._notifier is None else None

    def _hand_over(self, channel: str, messages: Sequence[Message], conn: Any = None) -> None:
        """Give the in-process notifier what a statement did not send itself; from this
        thread, delivered on the notifier's loop, after the caller's transaction."""
        notifier = self._notifier() if self._notifier is not None and messages else None
        if notifier is None:
            return
        hold = None
        if conn is not None and in_transaction(conn):
            hold = functools.partial(in_transaction, conn)
        notifier.notify_threadsafe(channel, *messages, hold=hold)

    def insert_jobs(self, jobs: Sequence[Job], conn: Any = None) -> list[Job]:
        """Insert jobs, one statement per batch (unique jobs in their own)."""
        now, later, unique = split_due(jobs)
        plain = sorted(now + later)
        saved: dict[int, Job] = {}
        channel = self._inline(self.sql.insert_channel)
        with self._connection(conn) as c:
            for start in range(0, len(plain), INSERT_BATCH):
                chunk = plain[start : start + INSERT_BATCH]
                params = insert_params([jobs[i] for i in chunk], channel)
                with c.cursor(row_factory=tuple_row) as cur:  # any caller row factory
                    rows = cur.execute(self.sql["insert_jobs"], params).fetchall()
                saved.update(zip(chunk, saved_jobs([jobs[i] for i in chunk], rows), strict=True))
            if unique:
                made = self._insert_unique(c, [jobs[i] for i in unique])
                saved.update(zip(unique, made, strict=True))
        out = [saved[i] for i in range(len(jobs))]
        if channel is None:
            self._hand_over(self.sql.insert_channel, insert_messages(out), conn)
        return out

    def _insert_unique(self, conn: Any, jobs: list[Job]) -> list[Job]:
        steps = insert_unique(jobs, self._inline(self.sql.insert_channel))
        rows: Any = None
        try:
            while True:
                name, params = steps.send(rows)
                with conn.cursor(row_factory=unique_row) as cur:
                    rows = cur.execute(self.sql[name], params).fetchall()
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def complete_job(self, job_id: int, attempt: int, conn: Any, owner: str | None = None) -> bool:
        """Complete a running attempt on the caller's connection; False if it lost it."""
        with conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(
                self.sql["complete_job"], {"id": job_id, "attempt": attempt, "owner": owner}
            )
            return cur.fetchone() is not None

    def get_jobs(self, ids: Sequence[int], conn: Any = None) -> list[Job]:
        """Read jobs by id."""
        return self._rows("get_jobs", {"ids": list(ids)}, conn)

    def retry_jobs(self, ids: Sequence[int], conn: Any = None) -> list[Job]:
        """Make jobs that are not running available again."""
        retried = self._retry(ids, conn)
        self._hand_over(self.sql.insert_channel, insert_messages(retried), conn)
        return retried

    def _retry(self, ids: Sequence[int], conn: Any) -> list[Job]:
        params = {"ids": list(ids), "channel": self._inline(self.sql.insert_channel)}
        for _ in range(UNIQUE_RACE_ATTEMPTS - 1):
            try:
                return self._rows("retry_jobs", params, conn)
            except psycopg.errors.UniqueViolation:
                if conn is not None and not conn.autocommit:
                    raise  # the caller's transaction is aborted: only it can decide
        return self._rows("retry_jobs", params, conn)

    def cancel_jobs(self, ids: Sequence[int], conn: Any = None) -> list[Job]:
        """Cancel unfinished jobs (running ones are signalled to stop)."""
        params = {"ids": list(ids), "signal": self._inline(self.sql.signal_channel)}
        rows = self._rows("cancel_jobs", params, conn, row_factory=flagged_job_row)
        kills = [pkill_message(job.id) for job, live in rows if live]
        self._hand_over(self.sql.signal_channel, kills, conn)
        return [job for job, _ in rows]

    def delete_jobs(self, ids: Sequence[int], conn: Any = None) -> list[Job]:
        """Delete jobs that are not running."""
        return self._rows("delete_jobs", {"ids": list(ids)}, conn)

    def set_queue_state(
        self, queue: str, node: str, changes: dict[str, Any], signal: QueueSignal
    ) -> None:
        """Persist a queue command and announce it (see `QueueSignal`), in one transaction."""
        channel = self._inline(self.sql.signal_channel)
        control = None if channel is None else self.sql.control_channel
        params = queue_state_params(queue, node, changes, signal, channel, control)
        with self._connection(None) as c, c.cursor(row_factory=tuple_row) as cur:
            rows = cur.execute(self.sql["set_queue_state"], params).fetchall()
        # (Only for an in-process notifier: otherwise the statement sent them itself.)
        self._hand_over(self.sql.control_channel, [p for n, p, _ in rows if n == 1])
        self._hand_over(self.sql.signal_channel, [p for n, p, _ in rows if n == 2])
