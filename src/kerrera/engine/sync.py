"""The PostgreSQL engine for synchronous callers (Django, Flask, scripts): no event loop.

It runs the same named statements as the async engine, on the caller's `psycopg.Connection`
when given (so a job commits or rolls back with the caller's transaction), otherwise on a
small pool of its own, opened on first use.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg.rows import tuple_row
from psycopg_pool import ConnectionPool

from kerrera import _json
from kerrera._job import Job
from kerrera.engine.inspect import SyncInspectQueries
from kerrera.engine.postgres import INSERT_BATCH, UNIQUE_RACE_ATTEMPTS
from kerrera.engine.statements import (
    Statements,
    flagged_job_row,
    insert_params,
    job_row,
    queue_state_params,
    saved_jobs,
    split_due,
)
from kerrera.engine.testing import SyncTestingQueries
from kerrera.engine.unique import insert_unique


class SyncPostgresEngine(SyncTestingQueries, SyncInspectQueries):
    """Insert and manage jobs from synchronous code."""

    def __init__(self, dsn: str, prefix: str = "public", *, pool_size: int = 4) -> None:
        self.sql = Statements(prefix)
        self.dsn = dsn
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

    def _rows(self, name: str, params: dict[str, Any], conn: Any = None) -> list[Job]:
        with self._connection(conn) as c, c.cursor(row_factory=job_row) as cur:
            cur.execute(self.sql[name], params)
            return cur.fetchall()

    def insert_jobs(self, jobs: Sequence[Job], conn: Any = None) -> list[Job]:
        """Insert jobs, one statement per batch (unique jobs in their own)."""
        now, later, unique = split_due(jobs)
        plain = sorted(now + later)
        saved: dict[int, Job] = {}
        with self._connection(conn) as c:
            for start in range(0, len(plain), INSERT_BATCH):
                chunk = plain[start : start + INSERT_BATCH]
                params = insert_params([jobs[i] for i in chunk], self.sql.insert_channel)
                with c.cursor(row_factory=tuple_row) as cur:  # any caller row factory
                    rows = cur.execute(self.sql["insert_jobs"], params).fetchall()
                saved.update(zip(chunk, saved_jobs([jobs[i] for i in chunk], rows), strict=True))
            if unique:
                made = self._insert_unique(c, [jobs[i] for i in unique])
                saved.update(zip(unique, made, strict=True))
        return [saved[i] for i in range(len(jobs))]

    def _insert_unique(self, conn: Any, jobs: list[Job]) -> list[Job]:
        steps = insert_unique(jobs, self.sql.insert_channel)
        rows: Any = None
        try:
            while True:
                name, params = steps.send(rows)
                with conn.cursor(row_factory=flagged_job_row) as cur:
                    rows = cur.execute(self.sql[name], params).fetchall()
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def complete_job(self, job_id: int, attempt: int, conn: Any) -> bool:
        """Complete a running attempt on the caller's connection; False if it lost it."""
        with conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(self.sql["complete_job"], {"id": job_id, "attempt": attempt})
            return cur.fetchone() is not None

    def get_jobs(self, ids: Sequence[int], conn: Any = None) -> list[Job]:
        """Read jobs by id."""
        return self._rows("get_jobs", {"ids": list(ids)}, conn)

    def retry_jobs(self, ids: Sequence[int], conn: Any = None) -> list[Job]:
        """Make jobs that are not running available again."""
        params = {"ids": list(ids), "channel": self.sql.insert_channel}
        for _ in range(UNIQUE_RACE_ATTEMPTS - 1):
            try:
                return self._rows("retry_jobs", params, conn)
            except psycopg.errors.UniqueViolation:
                if conn is not None and not conn.autocommit:
                    raise  # the caller's transaction is aborted: only it can decide
        return self._rows("retry_jobs", params, conn)

    def cancel_jobs(self, ids: Sequence[int], conn: Any = None) -> list[Job]:
        """Cancel unfinished jobs."""
        return self._rows(
            "cancel_jobs", {"ids": list(ids), "signal": self.sql.signal_channel}, conn
        )

    def delete_jobs(self, ids: Sequence[int], conn: Any = None) -> list[Job]:
        """Delete jobs that are not running."""
        return self._rows("delete_jobs", {"ids": list(ids)}, conn)

    def set_queue_state(self, queue: str, node: str, changes: dict[str, Any], payload: str) -> None:
        """Persist a queue command and signal it, in one transaction."""
        with self._connection(None) as c:
            c.execute(
                self.sql["set_queue_state"],
                queue_state_params(queue, node, changes, payload, self.sql.signal_channel),
            )
