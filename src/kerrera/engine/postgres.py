"""The PostgreSQL engine (async): a psycopg connection pool and the named statements."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from kerrera import _json
from kerrera._job import Job
from kerrera.engine.base import AckBatch, QueueSignal
from kerrera.engine.inspect import InspectQueries
from kerrera.engine.statements import (
    Statements,
    ack_params,
    copied_jobs,
    copy_rows,
    flagged_job_row,
    in_transaction,
    insert_messages,
    insert_params,
    job_row,
    pkill_message,
    queue_messages,
    queue_state_params,
    saved_jobs,
    split_due,
)
from kerrera.engine.testing import TestingQueries
from kerrera.engine.unique import insert_unique, unique_row

if TYPE_CHECKING:
    from kerrera.notifier.base import Message, Notifier

log = logging.getLogger("kerrera.engine")

#: Statements safe to run again when their connection turned out to be dead: reads, and
#: management calls whose second run changes nothing the first did not.
_RETRYABLE = frozenset({"get_jobs", "retry_jobs", "cancel_jobs", "delete_jobs"})

#: A retry that collides with a unique insert committing at the same moment is run
#: again (it then sees the new holder and gives its key up); this many times at most.
UNIQUE_RACE_ATTEMPTS = 3
#: Jobs per insert statement in `insert_all`: large enough to amortise the round trip,
#: small enough that one JSON parameter stays a few megabytes.
INSERT_BATCH = 5000
#: From this many jobs due now, a batch goes through COPY (three round trips, but about
#: twice the rows per second of INSERT ... RETURNING); below it, one INSERT statement.
COPY_FROM = 200


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    _json.configure(conn)
    # Kerrera's statements are short, but some carry large cost estimates (a bulk retry's
    # unique check); compiling them with JIT costs far more than running them.
    await conn.execute("SET jit = off")


class PostgresEngine(InspectQueries, TestingQueries):
    """Runs every statement of Kerrera against PostgreSQL through one async pool.

    Connections are in autocommit mode: each statement is its own transaction, which is
    what keeps the transactions-per-job count low. Statements are prepared by psycopg
    after a few executions (do not put PgBouncer in transaction mode in front of it).
    """

    def __init__(self, dsn: str, prefix: str = "public", *, pool_size: int = 10) -> None:
        self.sql = Statements(prefix)
        self.dsn = dsn
        self.pool = AsyncConnectionPool(
            dsn, min_size=1, max_size=max(pool_size, 2), open=False,
            kwargs={"autocommit": True}, name=f"kerrera-{prefix}", configure=_configure,
            reconnect_timeout=float("inf"),
        )  # fmt: skip
        #: Where this engine's notifications go (set by the app when it opens the engine).
        #: None, or a transactional notifier: statements `pg_notify` themselves.
        self.notifier: Notifier | None = None

    async def open(self) -> None:
        """Open the pool and wait until a first connection works."""
        await self.pool.open(wait=True, timeout=30)

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.pool.close()

    async def _rows(
        self, name: str, params: dict[str, Any], conn: Any = None, row_factory: Any = job_row
    ) -> list[Any]:
        if conn is not None:
            async with conn.cursor(row_factory=row_factory) as cur:
                await cur.execute(self.sql[name], params)
                return await cur.fetchall()  # type: ignore[no-any-return]
        try:
            return await self._pooled_rows(name, params, row_factory)
        except psycopg.OperationalError:
            if name not in _RETRYABLE:
                raise
            await self._drop_dead_connections()
            # once, on a checked connection
            return await self._pooled_rows(name, params, row_factory)

    async def _pooled_rows(self, name: str, params: dict[str, Any], row_factory: Any) -> list[Any]:
        async with self.pool.connection() as c, c.cursor(row_factory=row_factory) as cur:
            await cur.execute(self.sql[name], params)
            return await cur.fetchall()

    # -- notifications -------------------------------------------------------------------
    def _inline(self, channel: str) -> str | None:
        """The one place that decides how a statement's notifications go out: the
        channel for the statement's own `pg_notify` (delivered only if it commits, at no
        extra round trip), or None when the notifier delivers in-process: the statement
        then skips it and the engine passes the messages to `_hand_over` afterwards."""
        notifier = self.notifier
        return channel if notifier is None or notifier.transactional else None

    async def _hand_over(self, channel: str, messages: Sequence[Message], conn: Any = None) -> None:
        """Give an in-process notifier what a statement did not send itself. On a
        caller's connection inside a transaction, delivery waits for its end (as NOTIFY
        does: a producer woken before the commit would find nothing)."""
        notifier = self.notifier
        if notifier is None or notifier.transactional or not messages:
            return
        try:
            if conn is not None and in_transaction(conn):
                hold = functools.partial(in_transaction, conn)
                notifier.notify_threadsafe(channel, *messages, hold=hold)
            else:
                await notifier.notify(channel, *messages)
        except Exception as exc:  # the statement is done: never fail it for a wake-up
            log.warning("could not hand %d notification(s) over (%s)", len(messages), exc)

    async def _drop_dead_connections(self) -> None:
        # One dead pooled connection usually means all of them died (a server restart,
        # pg_terminate_backend): check the idle ones now, so that the next calls get
        # working connections instead of failing one by one.
        try:
            await self.pool.check()
        except Exception as exc:  # the check itself can fail while the server is away
            log.warning("could not check pooled connections: %s", exc)

    async def insert_jobs(self, jobs: Sequence[Job], conn: Any = None) -> list[Job]:
        if conn is not None:
            return await self._insert_on(conn, jobs)
        try:
            async with self.pool.connection() as c:
                return await self._insert_on(c, jobs)
        except psycopg.OperationalError:
            # Not retried: the insert may have committed before the reply was lost.
            await self._drop_dead_connections()
            raise

    async def _insert_on(self, conn: Any, jobs: Sequence[Job]) -> list[Job]:
        saved: dict[int, Job] = {}
        now, later, unique = split_due(jobs)
        if unique:
            made = await self._insert_unique(conn, [jobs[i] for i in unique])
            saved.update(zip(unique, made, strict=True))
        for start in range(0, len(now), INSERT_BATCH):
            chunk = now[start : start + INSERT_BATCH]
            if len(chunk) >= COPY_FROM:
                made = await self._copy(conn, [jobs[i] for i in chunk])
            else:
                made = await self._insert_rows(conn, [jobs[i] for i in chunk])
            saved.update(zip(chunk, made, strict=True))
        for start in range(0, len(later), INSERT_BATCH):
            chunk = later[start : start + INSERT_BATCH]
            made = await self._insert_rows(conn, [jobs[i] for i in chunk])
            saved.update(zip(chunk, made, strict=True))
        out = [saved[i] for i in range(len(jobs))]
        if self._inline(self.sql.insert_channel) is None:
            await self._hand_over(self.sql.insert_channel, insert_messages(out), conn)
        return out

    async def _insert_rows(self, conn: Any, jobs: list[Job]) -> list[Job]:
        params = insert_params(jobs, self._inline(self.sql.insert_channel))
        # The caller's connection may have any row factory: read plain tuples.
        async with conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(self.sql["insert_jobs"], params)
            rows = await cur.fetchall()
        return saved_jobs(jobs, rows)

    async def _insert_unique(self, conn: Any, jobs: list[Job]) -> list[Job]:
        steps = insert_unique(jobs, self._inline(self.sql.insert_channel))
        rows: Any = None
        try:
            while True:
                name, params = steps.send(rows)
                async with conn.cursor(row_factory=unique_row) as cur:
                    await cur.execute(self.sql[name], params)
                    rows = await cur.fetchall()
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def _copy(self, conn: Any, jobs: list[Job]) -> list[Job]:
        # One transaction: ids and the timestamp the defaults use, the rows, the
        # notification; nothing is read back. A caller's connection outside autocommit
        # is already in (or opens) its own transaction, which must decide: no block of
        # ours there, or psycopg would commit it.
        if not conn.autocommit:
            return await self._copy_rows(conn, jobs)
        async with conn.transaction():
            return await self._copy_rows(conn, jobs)

    async def _copy_rows(self, conn: Any, jobs: list[Job]) -> list[Job]:
        async with conn.cursor(row_factory=tuple_row) as cur:
            params = {"table": self.sql.table, "n": len(jobs)}
            await cur.execute(self.sql["reserve_ids"], params)
            ids_text, at = await cur.fetchone()
        ids = [int(i) for i in ids_text.split(",")]
        async with conn.cursor().copy(self.sql["copy_jobs"]) as copy:
            for row in copy_rows(ids, jobs):
                await copy.write_row(row)
        channel = self._inline(self.sql.insert_channel)
        if channel is not None:  # (else `_insert_on` hands the wake-ups over)
            await conn.execute(self.sql["notify_queues"], {
                "channel": channel, "queues": sorted({j.queue for j in jobs}),
            })  # fmt: skip
        return copied_jobs(ids, at, jobs)

    async def fetch_jobs(
        self, queue: str, demand: int, acks: AckBatch, node: str, producer: str
    ) -> list[Job]:
        if acks.released_ids:
            await self._release(acks)
        params = ack_params(acks, queue, demand, node, producer)
        return await self._rows("fetch_jobs", params)

    async def ack_jobs(self, acks: AckBatch, conn: Any = None) -> None:
        """Write `acks` (releases on a pooled connection; outcomes on `conn` if given)."""
        if acks.released_ids:
            await self._release(acks)
        if acks.done_ids or acks.other:
            await self._rows("fetch_jobs", ack_params(acks), conn)

    async def _release(self, acks: AckBatch) -> None:
        channel = self._inline(self.sql.insert_channel)
        async with self.pool.connection() as c:
            cur = await c.execute(self.sql["release_jobs"], {
                "ids": acks.released_ids, "attempts": acks.released_attempts,
                "owner": acks.producer, "channel": channel,
            })  # fmt: skip
            queues = sorted({row[1] for row in await cur.fetchall()})
        acks.released_ids, acks.released_attempts = [], []
        if channel is None and queues:
            await self._hand_over(self.sql.insert_channel, queue_messages(queues))

    async def reclaim_jobs(self, queue: str, producer: str, running: Sequence[int]) -> int:
        async with self.pool.connection() as c:
            cur = await c.execute(
                self.sql["reclaim_jobs"],
                {"queue": queue, "producer": producer, "running": list(running)},
            )
            row = await cur.fetchone()
            return int(row[0]) if row else 0

    async def heartbeat(self, producers: Sequence[tuple[str, str, str, str]]) -> None:
        await self._execute("heartbeat", {
            "uuids": [p[0] for p in producers], "nodes": [p[1] for p in producers],
            "queues": [p[2] for p in producers], "states": [p[3] for p in producers],
        })  # fmt: skip

    async def forget_producers(self, uuids: Sequence[str]) -> None:
        async with self.pool.connection() as c:
            await c.execute(self.sql["forget_producers"], {"uuids": list(uuids)})

    async def rescue_jobs(self, ttl: float, rescue_after: float) -> tuple[int, int]:
        rows = await self._execute("rescue_jobs", {
            "ttl": ttl, "rescue_after": rescue_after,
            "channel": self._inline(self.sql.insert_channel),
        })  # fmt: skip
        if not rows:
            return 0, 0
        rescued, expired, queues = rows[0]
        await self._hand_over(self.sql.insert_channel, queue_messages(queues))
        return int(rescued), int(expired)

    async def stage_jobs(self, limit: int) -> dict[str, int]:
        rows = await self._execute(
            "stage_jobs", {"limit": limit, "channel": self._inline(self.sql.insert_channel)}
        )
        staged = {queue: int(n) for queue, n, _ in rows}
        await self._hand_over(self.sql.insert_channel, queue_messages(staged))
        return staged

    async def complete_job(
        self, job_id: int, attempt: int, conn: Any, owner: str | None = None
    ) -> bool:
        params = {"id": job_id, "attempt": attempt, "owner": owner}
        async with conn.cursor(row_factory=tuple_row) as cur:
            await cur.execute(self.sql["complete_job"], params)
            return await cur.fetchone() is not None

    async def get_jobs(self, ids: Sequence[int], conn: Any = None) -> list[Job]:
        return await self._rows("get_jobs", {"ids": list(ids)}, conn)

    async def retry_jobs(self, ids: Sequence[int]) -> list[Job]:
        retried = await self._retry(ids)
        await self._hand_over(self.sql.insert_channel, insert_messages(retried))
        return retried

    async def _retry(self, ids: Sequence[int]) -> list[Job]:
        params = {"ids": list(ids), "channel": self._inline(self.sql.insert_channel)}
        for _ in range(UNIQUE_RACE_ATTEMPTS - 1):
            try:
                return await self._rows("retry_jobs", params)
            except psycopg.errors.UniqueViolation:
                continue  # a duplicate committed meanwhile: now the statement sees it
        return await self._rows("retry_jobs", params)

    async def cancel_jobs(self, ids: Sequence[int]) -> list[Job]:
        params = {"ids": list(ids), "signal": self._inline(self.sql.signal_channel)}
        rows = await self._rows("cancel_jobs", params, row_factory=flagged_job_row)
        kills = [pkill_message(job.id) for job, live in rows if live]
        await self._hand_over(self.sql.signal_channel, kills)
        return [job for job, _ in rows]

    async def delete_jobs(self, ids: Sequence[int]) -> list[Job]:
        return await self._rows("delete_jobs", {"ids": list(ids)})

    async def notify(self, channel: str, *payloads: str) -> None:
        """Send encoded payloads on `channel` with `pg_notify`, in one statement. This is
        the Postgres notifier's transport: everything else sends through the notifier."""
        async with self.pool.connection() as c:
            await c.execute(self.sql["notify"], {"channel": channel, "payloads": list(payloads)})

    async def _execute(self, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        async with self.pool.connection() as c, c.cursor(row_factory=tuple_row) as cur:
            await cur.execute(self.sql[name], params)
            return await cur.fetchall() if cur.description else []

    # -- leadership -----------------------------------------------------------------------
    async def elect_leader(self, name: str, node: str, started_at: datetime, lease: float) -> bool:
        """Take or renew the lease of `name`; True while this instance holds it."""
        rows = await self._execute("elect_leader", {
            "name": name, "node": node, "started_at": started_at, "lease": lease,
        })  # fmt: skip
        return bool(rows)

    async def resign_leader(self, name: str, node: str, started_at: datetime) -> None:
        """Give the lease up (if held) and notify the others."""
        rows = await self._execute("resign_leader", {
            "name": name, "node": node, "started_at": started_at,
            "channel": self._inline(self.sql.leader_channel),
        })  # fmt: skip
        downs: list[Message] = [{"down": row[0]} for row in rows]
        await self._hand_over(self.sql.leader_channel, downs)

    async def get_leader(self, name: str) -> str | None:
        """The node holding the unexpired lease of `name`, if any."""
        rows = await self._execute("get_leader", {"name": name})
        return str(rows[0][0]) if rows else None

    # -- maintenance ----------------------------------------------------------------------
    async def prune_jobs(self, max_age: dict[str, float | None], limit: int) -> dict[str, int]:
        """Delete one batch of finished jobs older than their state's max age."""
        rows = await self._execute("prune_jobs", {
            "completed": max_age.get("completed"), "cancelled": max_age.get("cancelled"),
            "discarded": max_age.get("discarded"), "limit": limit,
        })  # fmt: skip
        counts: dict[str, int] = {}
        for (state,) in rows:
            counts[state] = counts.get(state, 0) + 1
        return counts

    async def job_indexes(self) -> list[tuple[str, bool]]:
        """Indexes of the jobs table: (qualified name, True for a leftover of an
        interrupted concurrent rebuild, to drop)."""
        rows = await self._execute("job_indexes", {"table": self.sql.table})
        return [(str(name), bool(leftover)) for name, leftover in rows]

    async def rebuild_index(self, name: str, *, drop: bool = False) -> None:
        """REINDEX (or DROP) an index CONCURRENTLY; `name` comes from `job_indexes`."""
        verb = "DROP INDEX CONCURRENTLY IF EXISTS" if drop else "REINDEX INDEX CONCURRENTLY"
        async with self.pool.connection() as c:
            await c.execute(f"{verb} {name}")

    async def insert_cron(
        self, names: Sequence[str], plan: Callable[[dict[str, datetime], datetime], list[Job]]
    ) -> tuple[list[Job], datetime]:
        """In one transaction: lock the cron entries' last ticks, insert the jobs that
        `plan(last_ticks, db_now)` returns, and advance the ticks to db_now."""
        async with self.pool.connection() as c:
            await c.execute(self.sql["seed_cron"], {"names": list(names)})
            async with c.transaction():
                cur = await c.execute(self.sql["lock_cron"], {"names": list(names)})
                rows = await cur.fetchall()
                now = rows[0][2] if rows else await self.db_now()
                jobs = plan({r[0]: r[1] for r in rows}, now)
                saved = await self._insert_on(c, jobs) if jobs else []
                await c.execute(self.sql["advance_cron"], {"names": list(names), "until": now})
        return saved, now

    async def db_now(self) -> datetime:
        """The database clock (naive UTC)."""
        rows = await self._execute("db_now", {})
        return rows[0][0]  # type: ignore[no-any-return]

    # -- queue control --------------------------------------------------------------------
    async def set_queue_state(
        self, queue: str, node: str, changes: dict[str, Any], signal: QueueSignal
    ) -> None:
        """Persist a queue command (`changes`: paused / limit / running) and announce it
        (`signal`: see `QueueSignal`), in one transaction."""
        channel = self._inline(self.sql.signal_channel)
        control = None if channel is None else self.sql.control_channel
        rows = await self._execute(
            "set_queue_state", queue_state_params(queue, node, changes, signal, channel, control)
        )
        # (Only for an in-process notifier: otherwise the statement sent them itself.)
        await self._hand_over(self.sql.control_channel, [p for n, p, _ in rows if n == 1])
        await self._hand_over(self.sql.signal_channel, [p for n, p, _ in rows if n == 2])

    async def instance_names(self) -> list[str]:
        """The instance names in `oban_peers`."""
        return [row[0] for row in await self._execute("instance_names", {})]

    async def queue_states(self, node: str) -> list[tuple[str, str, Any, Any, Any]]:
        """Persisted queue commands for every node ('') and for `node`."""
        rows = await self._execute("queue_states", {"node": node})
        return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    async def producer_states(self, ttl: float) -> list[tuple[Any, ...]]:
        """(node, queue, uuid, started_at, updated_at, state json) of live producers."""
        return await self._execute("producer_states", {"ttl": ttl})

    async def write_progress(
        self, job_id: int, attempt: int, progress: dict[str, Any], message: str
    ) -> bool:
        """Store a running job's progress in its meta and publish `message`, if this
        attempt still owns the job. Returns whether it did."""
        rows = await self._execute("write_progress", {
            "id": job_id, "attempt": attempt, "progress": _json.dumps(progress),
            "channel": self._inline(self.sql.events_channel), "payload": message,
        })  # fmt: skip
        if rows:
            await self._hand_over(self.sql.events_channel, [message])
        return bool(rows)

    async def listen_connection(self) -> psycopg.AsyncConnection[Any]:
        """A dedicated connection for LISTEN (never pooled: it holds session state)."""
        return await asyncio.wait_for(
            psycopg.AsyncConnection.connect(self.dsn, autocommit=True), timeout=10
        )
