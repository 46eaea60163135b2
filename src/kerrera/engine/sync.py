"""The PostgreSQL engine for synchronous callers (Django, Flask, scripts): no event loop.

It drives the same operations as the async engine (jobs.py, inspect.py, testing.py,
node.py; see steps.py), on the caller's `psycopg.Connection` when given (so a job commits
or rolls back with the caller's transaction), otherwise on a small pool of its own,
opened on first use. It exists because a caller's sync connection cannot be driven from
an event loop. Its notifications go out as the async engine's do: inside the statements,
or (for an in-process notifier) handed to the app's notifier, which delivers them on its
own loop.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from kerrera.core import codec
from kerrera.core.job import Job, RunningJob
from kerrera.core.workflow import WorkflowPlan
from kerrera.engine import compose as compose_ops
from kerrera.engine import inspect as inspect_ops
from kerrera.engine import jobs as job_ops
from kerrera.engine import node as node_ops
from kerrera.engine import testing as testing_ops
from kerrera.engine import workflows as wf_ops
from kerrera.engine.base import AckBatch, EngineNotifier, Message, QueueSignal
from kerrera.engine.inspect import JobFilter
from kerrera.engine.statements import Statements, in_transaction
from kerrera.engine.steps import Atomic, CopyIn, HandOver, Query, Route, Step, Steps, repeatable

T = TypeVar("T")

#: Finds the app's in-process notifier when there is something to deliver (None while
#: the app has none open: then nobody in this process listens).
NotifierRef = Callable[[], "EngineNotifier | None"]


class SyncPostgresEngine:
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
                    kwargs={"autocommit": True}, configure=codec.configure,
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

    # -- driving steps (as `PostgresEngine` does, without awaiting) -----------------------
    def _run(self, steps: Steps[T], conn: Any = None) -> T:
        """Drive `steps` on `conn`, or on a pooled connection."""
        with self._connection(conn) as c:
            return self._drive(c, steps)

    def _drive(self, conn: Any, steps: Steps[T]) -> T:
        reply: Any = None
        failed: Exception | None = None
        while True:
            try:
                step = steps.send(reply) if failed is None else steps.throw(failed)
            except StopIteration as done:
                result: T = done.value
                return result
            failed = None
            try:
                reply = self._step(conn, step)
            except Exception as exc:  # the operation decides (see steps.py)
                failed = exc

    def _step(self, conn: Any, step: Step) -> Any:
        match step:
            case Query(name, params, row):
                with conn.cursor(row_factory=row) as cur:
                    cur.execute(self.sql[name], params)
                    return cur.fetchall() if cur.description else []
            case CopyIn(name, rows):
                with conn.cursor() as cur, cur.copy(self.sql[name]) as copy:
                    for values in rows:
                        copy.write_row(values)
            case Atomic(nested):
                if not conn.autocommit:  # the caller's transaction decides
                    return self._drive(conn, nested)
                with conn.transaction():
                    return self._drive(conn, nested)
            case HandOver(channel, messages):
                self._hand_over(channel, messages, conn)
        return None

    # -- notifications -------------------------------------------------------------------
    def _route(self, channel: str) -> Route:
        """How a statement's notifications go out (see `PostgresEngine._route`)."""
        return Route(channel, self._notifier is None)

    def _hand_over(self, channel: str, messages: Sequence[Message], conn: Any) -> None:
        """Give the in-process notifier what a statement did not send itself; from this
        thread, delivered on the notifier's loop, after the transaction in progress."""
        notifier = self._notifier() if self._notifier is not None and messages else None
        if notifier is None:
            return
        hold = functools.partial(in_transaction, conn) if in_transaction(conn) else None
        notifier.notify_threadsafe(channel, *messages, hold=hold)

    # -- jobs ----------------------------------------------------------------------------
    def insert_jobs(self, jobs: Sequence[Job], conn: Any = None) -> list[Job]:
        """Insert jobs (see `jobs.insert_jobs`), on `conn` when given."""
        return self._run(job_ops.insert_jobs(jobs, self._route(self.sql.insert_channel)), conn)

    def ack_jobs(self, acks: AckBatch, conn: Any = None) -> None:
        """Write `acks` without fetching, on `conn` when given."""
        self._run(job_ops.ack_jobs(acks, self._route(self.sql.insert_channel)), conn)

    def complete_job(self, job_id: int, attempt: int, conn: Any, owner: str | None = None) -> bool:
        """Complete a running attempt on the caller's connection; False if it lost it."""
        return self._run(job_ops.complete_job(job_id, attempt, owner), conn)

    def get_jobs(self, ids: Sequence[int], conn: Any = None) -> list[Job]:
        """Read jobs by id."""
        return self._run(job_ops.get_jobs(ids), conn)

    def retry_jobs(self, ids: Sequence[int], conn: Any = None) -> list[Job]:
        """Make jobs that are not running available again."""
        route = self._route(self.sql.insert_channel)
        return self._run(job_ops.retry_jobs(ids, route, repeatable=repeatable(conn)), conn)

    def cancel_jobs(self, ids: Sequence[int], conn: Any = None) -> list[Job]:
        """Cancel unfinished jobs (running ones are signalled to stop)."""
        return self._run(job_ops.cancel_jobs(ids, self._route(self.sql.signal_channel)), conn)

    def delete_jobs(self, ids: Sequence[int], conn: Any = None) -> list[Job]:
        """Delete jobs that are not running."""
        return self._run(job_ops.delete_jobs(ids), conn)

    def insert_workflow(self, plan: WorkflowPlan, conn: Any = None) -> list[Job]:
        """Insert a workflow and its steps in one statement, on `conn` when given."""
        route = self._route(self.sql.insert_channel)
        return self._run(wf_ops.insert_workflow(plan, route), conn)

    def insert_batch(
        self, batch_id: str, callbacks: dict[str, Any], open_: bool, jobs: Sequence[Job],
        conn: Any = None,
    ) -> list[Job]:  # fmt: skip
        """Create a batch and insert its jobs in one transaction, on `conn` when given."""
        route = self._route(self.sql.insert_channel)
        return self._run(compose_ops.insert_batch(batch_id, callbacks, open_, jobs, route), conn)

    def workflow_status(self, workflow_id: str) -> list[tuple[str, int, Any, Any]]:
        """(state, count, first inserted, last finished) per state of its steps."""
        return self._run(wf_ops.workflow_status(workflow_id))

    def set_queue_state(
        self, queue: str, node: str, changes: dict[str, Any], signal: QueueSignal
    ) -> None:
        """Persist a queue command and announce it (see `QueueSignal`), in one transaction."""
        signals, control = (
            self._route(self.sql.signal_channel),
            self._route(self.sql.control_channel),
        )
        self._run(node_ops.set_queue_state(queue, node, changes, signal, signals, control))

    def db_now(self) -> datetime:
        """The database clock (naive UTC)."""
        return self._run(node_ops.db_now())

    # -- operators (inspect.py) ----------------------------------------------------------
    def list_jobs(self, where: JobFilter, limit: int, before_id: int | None) -> list[Job]:
        """Up to `limit` jobs matching `where`, newest first, below `before_id` if given."""
        return self._run(inspect_ops.list_jobs(where, limit, before_id))

    def count_jobs(self) -> list[tuple[str, str, int]]:
        """(queue, state, count) of every queue's unfinished jobs."""
        return self._run(inspect_ops.count_jobs())

    # -- testing helpers (testing.py) ----------------------------------------------------
    def enqueued_jobs(self, **filters: Any) -> list[Job]:
        """Available or scheduled jobs matching `filters` (see `testing.enqueued_jobs`)."""
        return self._run(testing_ops.enqueued_jobs(**filters))

    def claim_jobs(
        self, ids: Sequence[int], node: str, producer: str, conn: Any = None
    ) -> list[RunningJob]:
        """Start these jobs now (inline mode), on `conn` when given."""
        return self._run(testing_ops.claim_jobs(ids, node, producer), conn)

    def insert_claimed(
        self, jobs: Sequence[Job], node: str, producer: str, conn: Any = None
    ) -> tuple[list[Job], list[RunningJob]]:
        """Insert jobs and claim the new ones in one transaction (inline mode)."""
        route = self._route(self.sql.insert_channel)
        return self._run(testing_ops.insert_claimed(jobs, node, producer, route), conn)
