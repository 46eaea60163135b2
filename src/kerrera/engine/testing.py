"""Statements of the testing helpers, mixed into both engines. Their SQL lives in
`sql/testing.sql`; acks reuse the runtime's own ack statement."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from kerrera import _json
from kerrera.engine.base import AckBatch
from kerrera.engine.statements import ack_params

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg.rows import TupleRow
    from psycopg_pool import AsyncConnectionPool

    from kerrera._job import Job
    from kerrera.engine.statements import Statements


def enqueued_params(
    worker: str | None, queue: str | None, args: dict[str, Any], meta: dict[str, Any],
    tags: Sequence[str], priority: int | None,
) -> dict[str, Any]:  # fmt: skip
    """Parameters of `enqueued_jobs`."""
    return {
        "worker": worker, "queue": queue, "priority": priority, "args": _json.dumps(args),
        "meta": _json.dumps(meta), "tags": list(tags),
    }  # fmt: skip


class TestingQueries:
    """The async engine's testing statements."""

    sql: Statements
    pool: AsyncConnectionPool[AsyncConnection[TupleRow]]

    # Provided by PostgresEngine, which this class is mixed into.
    async def _rows(self, name: str, params: dict[str, Any], conn: Any = None) -> list[Job]:
        raise NotImplementedError

    async def _execute(self, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def insert_jobs(self, jobs: Sequence[Job], conn: Any = None) -> list[Job]:
        raise NotImplementedError

    async def enqueued_jobs(self, **filters: Any) -> list[Job]:
        """Available or scheduled jobs matching `enqueued_params(**filters)`."""
        return await self._rows("enqueued_jobs", enqueued_params(**filters))

    async def claim_jobs(
        self, ids: Sequence[int], node: str, producer: str, conn: Any = None
    ) -> list[Job]:
        """Start these jobs now (inline mode), on `conn` when given."""
        params = {"ids": list(ids), "node": node, "producer": producer}
        return await self._rows("claim_jobs", params, conn)

    async def available_ids(self, queue: str) -> list[int]:
        """The queue's available jobs, in fetch order."""
        return [int(r[0]) for r in await self._execute("available_ids", {"queue": queue})]

    async def insert_claimed(
        self, jobs: Sequence[Job], node: str, producer: str, conn: Any = None
    ) -> tuple[list[Job], list[Job]]:
        """Insert jobs and claim the new ones in one transaction (inline mode): no node
        can fetch them in between. Returns (saved, claimed)."""
        if conn is not None:
            return await self._insert_claimed_on(conn, jobs, node, producer)
        async with self.pool.connection() as c, c.transaction():
            return await self._insert_claimed_on(c, jobs, node, producer)

    async def _insert_claimed_on(
        self, conn: Any, jobs: Sequence[Job], node: str, producer: str
    ) -> tuple[list[Job], list[Job]]:
        saved = await self.insert_jobs(jobs, conn)
        new = [j.id for j in saved if not j.conflict and j.id is not None]
        return saved, (await self.claim_jobs(new, node, producer, conn) if new else [])

    async def stage_queue_now(self, queue: str) -> None:
        """Make the queue's scheduled and retryable jobs available now."""
        await self._execute("stage_queue_now", {"queue": queue})


class SyncTestingQueries:
    """The sync engine's testing statements (for sync tests and sync inline inserts)."""

    sql: Statements

    # Provided by SyncPostgresEngine, which this class is mixed into.
    def _rows(self, name: str, params: dict[str, Any], conn: Any = None) -> list[Job]:
        raise NotImplementedError

    def _connection(self, conn: Any) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def insert_jobs(self, jobs: Sequence[Job], conn: Any = None) -> list[Job]:
        raise NotImplementedError

    def enqueued_jobs(self, **filters: Any) -> list[Job]:
        """Available or scheduled jobs matching `enqueued_params(**filters)`."""
        return self._rows("enqueued_jobs", enqueued_params(**filters))

    def claim_jobs(
        self, ids: Sequence[int], node: str, producer: str, conn: Any = None
    ) -> list[Job]:
        """Start these jobs now (inline mode), on `conn` when given."""
        params = {"ids": list(ids), "node": node, "producer": producer}
        return self._rows("claim_jobs", params, conn)

    def write_acks(self, acks: AckBatch, conn: Any = None) -> None:
        """Write outcomes (no releases), on `conn` when given."""
        if acks.done_ids or acks.other:
            self._rows("fetch_jobs", ack_params(acks), conn)

    def db_now(self) -> datetime:
        """The database clock (naive UTC)."""
        with self._connection(None) as c:
            row = c.execute(self.sql["db_now"]).fetchone()
            return row[0]  # type: ignore[no-any-return]

    def insert_claimed(
        self, jobs: Sequence[Job], node: str, producer: str, conn: Any = None
    ) -> tuple[list[Job], list[Job]]:
        """Insert jobs and claim the new ones in one transaction (inline mode)."""
        with self._connection(conn) as c, c.transaction():
            saved = self.insert_jobs(jobs, c)
            new = [j.id for j in saved if not j.conflict and j.id is not None]
            return saved, (self.claim_jobs(new, node, producer, c) if new else [])
