"""The PostgreSQL engine (async): a psycopg connection pool that drives the engine's
operations (jobs.py, node.py, inspect.py, testing.py, unique.py; see steps.py). It holds
no engine logic of its own, except the fetch: the hot path, one statement run directly."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from kerrera.core import codec
from kerrera.core.job import Job, RunningJob
from kerrera.core.workflow import WorkflowPlan
from kerrera.engine import chunks as chunk_ops
from kerrera.engine import compose as compose_ops
from kerrera.engine import inspect as inspect_ops
from kerrera.engine import jobs as job_ops
from kerrera.engine import node as node_ops
from kerrera.engine import testing as testing_ops
from kerrera.engine import workflows as wf_ops
from kerrera.engine.base import AckBatch, EngineNotifier, Message, QueueSignal
from kerrera.engine.inspect import JobFilter
from kerrera.engine.statements import Statements, ack_params, in_transaction, job_row
from kerrera.engine.steps import Atomic, CopyIn, HandOver, Query, Route, Step, Steps, one

log = logging.getLogger("kerrera.engine")

T = TypeVar("T")


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    codec.configure(conn)
    # Kerrera's statements are short, but some carry large cost estimates (a bulk retry's
    # unique check); compiling them with JIT costs far more than running them.
    await conn.execute("SET jit = off")


class PostgresEngine:
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
        self.notifier: EngineNotifier | None = None

    async def open(self) -> None:
        """Open the pool and wait until a first connection works."""
        await self.pool.open(wait=True, timeout=30)

    async def close(self) -> None:
        """Close every pooled connection."""
        await self.pool.close()

    # -- driving steps ---------------------------------------------------------------------
    async def _run(self, steps: Steps[T], conn: Any = None) -> T:
        """Drive `steps` on `conn`, or on a pooled connection."""
        if conn is not None:
            return await self._drive(conn, steps)
        try:
            async with self.pool.connection() as c:
                return await self._drive(c, steps)
        except psycopg.OperationalError:
            # Not run again: a write may have committed before the reply was lost.
            await self._drop_dead_connections()
            raise

    async def _run_again(self, make: Callable[[], Steps[T]], conn: Any = None) -> T:
        """`_run` for reads and management calls whose second run changes nothing the
        first did not: run once more when the pooled connection turned out dead."""
        if conn is not None:
            return await self._drive(conn, make())
        try:
            return await self._run(make())
        except psycopg.OperationalError:
            return await self._run(make())  # once, on a checked connection

    async def _drive(self, conn: Any, steps: Steps[T]) -> T:
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
                reply = await self._step(conn, step)
            except Exception as exc:  # the operation decides (see steps.py)
                failed = exc

    async def _step(self, conn: Any, step: Step) -> Any:
        match step:
            case Query(name, params, row):
                async with conn.cursor(row_factory=row) as cur:
                    await cur.execute(self.sql[name], params)
                    return await cur.fetchall() if cur.description else []
            case CopyIn(name, rows):
                async with conn.cursor() as cur, cur.copy(self.sql[name]) as copy:
                    for values in rows:
                        await copy.write_row(values)
            case Atomic(nested):
                if not conn.autocommit:  # the caller's transaction decides
                    return await self._drive(conn, nested)
                async with conn.transaction():
                    return await self._drive(conn, nested)
            case HandOver(channel, messages):
                await self._hand_over(channel, messages, conn)
        return None

    async def _drop_dead_connections(self) -> None:
        # One dead pooled connection usually means all of them died (a server restart,
        # pg_terminate_backend): check the idle ones now, so that the next calls get
        # working connections instead of failing one by one.
        try:
            await self.pool.check()
        except Exception as exc:  # the check itself can fail while the server is away
            log.warning("could not check pooled connections: %s", exc)

    # -- notifications -------------------------------------------------------------------
    def _route(self, channel: str) -> Route:
        """The one place that decides how a statement's notifications go out: by the
        statement's own `pg_notify` (delivered only if it commits, at no extra round
        trip), or, for an in-process notifier, handed over after it (`_hand_over`)."""
        notifier = self.notifier
        return Route(channel, notifier is None or notifier.transactional)

    async def _hand_over(self, channel: str, messages: Sequence[Message], conn: Any) -> None:
        """Give an in-process notifier what a statement did not send itself. Inside a
        transaction (a caller's, or an `Atomic` step's), delivery waits for its end (as
        NOTIFY does: a producer woken before the commit would find nothing)."""
        notifier = self.notifier
        if notifier is None or notifier.transactional or not messages:
            return
        try:
            if in_transaction(conn):
                hold = functools.partial(in_transaction, conn)
                notifier.notify_threadsafe(channel, *messages, hold=hold)
            else:
                await notifier.notify(channel, *messages)
        except Exception as exc:  # the statement is done: never fail it for a wake-up
            log.warning("could not hand %d notification(s) over (%s)", len(messages), exc)

    # -- jobs ----------------------------------------------------------------------------
    async def insert_jobs(self, jobs: Sequence[Job], conn: Any = None) -> list[Job]:
        """Insert jobs (see `jobs.insert_jobs`), on `conn` when given."""
        return await self._run(
            job_ops.insert_jobs(jobs, self._route(self.sql.insert_channel)), conn
        )

    async def fetch_jobs(
        self, queue: str, demand: int, acks: AckBatch, node: str, producer: str
    ) -> list[RunningJob]:
        """Write `acks` and claim up to `demand` available jobs of `queue`: one statement
        (`ack_and_fetch`), run directly, as this is the hot path."""
        if acks.released_ids:  # (only when a producer stops)
            await self._run(job_ops.release_jobs(acks, self._route(self.sql.insert_channel)))
        params = ack_params(acks, queue, demand, node, producer)
        async with self.pool.connection() as c, c.cursor(row_factory=job_row) as cur:
            await cur.execute(self.sql["ack_and_fetch"], params)
            # (rows of jobs now executing: their ids are set)
            return await cur.fetchall()

    async def ack_jobs(self, acks: AckBatch, conn: Any = None) -> None:
        """Write `acks` without fetching, on `conn` when given."""
        await self._run(job_ops.ack_jobs(acks, self._route(self.sql.insert_channel)), conn)

    async def fetch_chunk(
        self, queue: str, worker: str, by: Sequence[str], partition: Sequence[Any],
        demand: int, node: str, producer: str,
    ) -> list[RunningJob]:  # fmt: skip
        """Claim more jobs of one chunk worker and partition (see `chunks.fetch_chunk`)."""
        steps = chunk_ops.fetch_chunk(queue, worker, by, partition, demand, node, producer)
        return await self._run(steps)

    async def complete_job(
        self, job_id: int, attempt: int, conn: Any, owner: str | None = None
    ) -> bool:
        """Complete a running attempt on the caller's connection; False if it lost it."""
        return await self._run(job_ops.complete_job(job_id, attempt, owner), conn)

    async def get_jobs(self, ids: Sequence[int], conn: Any = None) -> list[Job]:
        """Read jobs by id."""
        return await self._run_again(lambda: job_ops.get_jobs(ids), conn)

    async def retry_jobs(self, ids: Sequence[int]) -> list[Job]:
        """Make jobs that are not running available again."""
        route = self._route(self.sql.insert_channel)
        return await self._run_again(lambda: job_ops.retry_jobs(ids, route, repeatable=True))

    async def cancel_jobs(self, ids: Sequence[int]) -> list[Job]:
        """Cancel unfinished jobs (running ones are signalled to stop)."""
        route = self._route(self.sql.signal_channel)
        return await self._run_again(lambda: job_ops.cancel_jobs(ids, route))

    async def delete_jobs(self, ids: Sequence[int]) -> list[Job]:
        """Delete jobs that are not running."""
        return await self._run_again(lambda: job_ops.delete_jobs(ids))

    # -- workflows (see workflows.py) --------------------------------------------------------
    async def insert_workflow(self, plan: WorkflowPlan, conn: Any = None) -> list[Job]:
        """Insert a workflow and its steps in one statement, on `conn` when given."""
        route = self._route(self.sql.insert_channel)
        return await self._run(wf_ops.insert_workflow(plan, route), conn)

    async def graft_workflow(
        self, workflow_id: str, step: str, names: Sequence[str], jobs: Sequence[Job]
    ) -> list[Job]:
        """Add jobs for a graft step (nothing when it grafted before)."""
        route = self._route(self.sql.insert_channel)
        return await self._run(wf_ops.graft(workflow_id, step, names, jobs, route))

    async def workflow_row(
        self, workflow_id: str, context: bool = True
    ) -> tuple[str | None, dict[str, Any], datetime] | None:
        """(name, context, inserted_at) of a workflow, None when unknown."""
        return await self._run_again(lambda: wf_ops.workflow_row(workflow_id, context))

    async def workflow_status(self, workflow_id: str) -> list[tuple[str, int, Any, Any]]:
        """(state, count, first inserted, last finished) per state of its steps."""
        return await self._run_again(lambda: wf_ops.workflow_status(workflow_id))

    async def workflow_jobs(self, workflow_id: str, names: Sequence[str] | None) -> list[Job]:
        """Its steps (with `names`: those counting toward one of the names)."""
        return await self._run_again(lambda: wf_ops.workflow_jobs(workflow_id, names))

    async def workflow_list(
        self, limit: int
    ) -> list[tuple[str, str | None, datetime, dict[str, int]]]:
        """The newest workflows with their steps per state."""
        return await self._run_again(lambda: wf_ops.workflow_list(limit))

    async def retry_workflow(self, workflow_id: str, args: dict[str, dict[str, Any]]) -> list[int]:
        """Run its failed and cancelled steps again, and what depends on them."""
        route = self._route(self.sql.insert_channel)
        return await self._run(wf_ops.retry_workflow(workflow_id, args, route))

    # -- batches and chains (see compose.py) -----------------------------------------------
    async def insert_batch(
        self, batch_id: str, callbacks: dict[str, Any], open_: bool, jobs: Sequence[Job],
        conn: Any = None,
    ) -> list[Job]:  # fmt: skip
        """Create a batch and insert its jobs in one transaction, on `conn` when given."""
        route = self._route(self.sql.insert_channel)
        steps = compose_ops.insert_batch(batch_id, callbacks, open_, jobs, route)
        return await self._run(steps, conn)

    async def append_batch(self, batch_id: str, jobs: Sequence[Job], conn: Any = None) -> list[Job]:
        """Add jobs to an open batch in one transaction, on `conn` when given."""
        route = self._route(self.sql.insert_channel)
        return await self._run(compose_ops.append_batch(batch_id, jobs, route), conn)

    async def close_batch(self, batch_id: str) -> bool:
        """Seal a batch and insert its due callbacks; False when unknown."""
        return await self._run_again(lambda: compose_ops.close_batch(batch_id))

    async def batch_status(self, batch_id: str) -> compose_ops.BatchCounts | None:
        """A batch's counts (None when unknown)."""
        return await self._run_again(lambda: compose_ops.batch_status(batch_id))

    async def chain_status(self, chain_id: str) -> compose_ops.ChainCounts | None:
        """A chain's counts (None when unknown)."""
        return await self._run_again(lambda: compose_ops.chain_status(chain_id))

    async def release_chain(self, chain_id: str) -> int | None:
        """Let a held chain go on; the id of the link released, if any."""
        return await self._run(compose_ops.release_chain(chain_id))

    # -- producers and services ----------------------------------------------------------
    async def reclaim_jobs(self, queue: str, producer: str, running: Sequence[int]) -> int:
        """Put back jobs this producer fetched but never received; return how many."""
        return await self._run(node_ops.reclaim_jobs(queue, producer, running))

    async def heartbeat(self, producers: Sequence[tuple[str, str, str, str]]) -> None:
        """Record that these producers (uuid, node, queue, state as JSON) are alive."""
        await self._run(node_ops.heartbeat(producers))

    async def forget_producers(self, uuids: Sequence[str]) -> None:
        """Remove producers that stopped cleanly."""
        await self._run(one("forget_producers", {"uuids": list(uuids)}))

    async def rescue_jobs(self, ttl: float, rescue_after: float) -> tuple[int, int]:
        """Rescue orphaned executing jobs; return (jobs rescued, producers expired)."""
        route = self._route(self.sql.insert_channel)
        return await self._run(node_ops.rescue_jobs(ttl, rescue_after, route))

    async def stage_jobs(self, limit: int) -> dict[str, int]:
        """Make due scheduled/retryable jobs available; return counts by queue."""
        return await self._run(node_ops.stage_jobs(limit, self._route(self.sql.insert_channel)))

    async def notify(self, channel: str, *payloads: str) -> None:
        """Send encoded payloads on `channel` with `pg_notify`, in one statement. This is
        the Postgres notifier's transport: everything else sends through the notifier."""
        await self._run(one("notify", {"channel": channel, "payloads": list(payloads)}))

    async def elect_leader(self, name: str, node: str, started_at: datetime, lease: float) -> bool:
        """Take or renew the lease of `name`; True while this instance holds it."""
        return await self._run(node_ops.elect_leader(name, node, started_at, lease))

    async def resign_leader(self, name: str, node: str, started_at: datetime) -> None:
        """Give the lease up (if held) and notify the others."""
        route = self._route(self.sql.leader_channel)
        await self._run(node_ops.resign_leader(name, node, started_at, route))

    async def get_leader(self, name: str) -> str | None:
        """The node holding the unexpired lease of `name`, if any."""
        return await self._run(node_ops.get_leader(name))

    async def prune_jobs(self, max_age: dict[str, float | None], limit: int) -> dict[str, int]:
        """Delete one batch of finished jobs older than their state's max age."""
        return await self._run(node_ops.prune_jobs(max_age, limit))

    async def job_indexes(self) -> list[tuple[str, bool]]:
        """Indexes of the jobs table: (qualified name, True for a leftover of an
        interrupted concurrent rebuild, to drop)."""
        return await self._run(node_ops.job_indexes())

    async def rebuild_index(self, name: str, *, drop: bool = False) -> None:
        """REINDEX (or DROP) an index CONCURRENTLY; `name` comes from `job_indexes`."""
        verb = "DROP INDEX CONCURRENTLY IF EXISTS" if drop else "REINDEX INDEX CONCURRENTLY"
        async with self.pool.connection() as c:
            await c.execute(f"{verb} {name}")

    async def insert_cron(
        self, names: Sequence[str], plan: node_ops.CronPlan
    ) -> tuple[list[Job], datetime]:
        """Insert the jobs `plan(last ticks, now)` returns and advance the ticks,
        atomically (see `node.insert_cron`)."""
        return await self._run(
            node_ops.insert_cron(names, plan, self._route(self.sql.insert_channel))
        )

    async def db_now(self) -> datetime:
        """The database clock (naive UTC)."""
        return await self._run(node_ops.db_now())

    async def set_queue_state(
        self, queue: str, node: str, changes: dict[str, Any], signal: QueueSignal
    ) -> None:
        """Persist a queue command (`changes`: paused / limit / running) and announce it
        (`signal`: see `QueueSignal`), in one transaction."""
        signals, control = (
            self._route(self.sql.signal_channel),
            self._route(self.sql.control_channel),
        )
        await self._run(node_ops.set_queue_state(queue, node, changes, signal, signals, control))

    async def instance_names(self) -> list[str]:
        """The instance names in `oban_peers`."""
        return await self._run(node_ops.instance_names())

    async def queue_states(self, node: str) -> list[tuple[str, str, Any, Any, Any]]:
        """Persisted queue commands for every node ('') and for `node`."""
        return await self._run(node_ops.queue_states(node))

    async def producer_states(self, ttl: float) -> list[tuple[Any, ...]]:
        """(node, queue, uuid, started_at, updated_at, state json) of live producers."""
        return await self._run(one("producer_states", {"ttl": ttl}))

    async def write_progress(
        self, job_id: int, attempt: int, progress: dict[str, Any], message: str
    ) -> bool:
        """Store a running job's progress in its meta and publish `message`, if this
        attempt still owns the job. Returns whether it did."""
        route = self._route(self.sql.events_channel)
        return await self._run(node_ops.write_progress(job_id, attempt, progress, message, route))

    async def listen_connection(self) -> psycopg.AsyncConnection[Any]:
        """A dedicated connection for LISTEN (never pooled: it holds session state)."""
        return await asyncio.wait_for(
            psycopg.AsyncConnection.connect(self.dsn, autocommit=True), timeout=10
        )

    # -- operators (inspect.py) ----------------------------------------------------------
    async def list_jobs(self, where: JobFilter, limit: int, before_id: int | None) -> list[Job]:
        """Up to `limit` jobs matching `where`, newest first, below `before_id` if given."""
        return await self._run(inspect_ops.list_jobs(where, limit, before_id))

    async def count_jobs(self) -> list[tuple[str, str, int]]:
        """(queue, state, count) of every queue's unfinished jobs."""
        return await self._run(inspect_ops.count_jobs())

    async def last_job_id(self) -> int:
        """The highest job id now (0 for an empty table)."""
        return await self._run(inspect_ops.last_job_id())

    async def select_job_ids(
        self, where: JobFilter, after_id: int, upto_id: int, limit: int
    ) -> list[int]:
        """One chunk of a bulk action's ids (see `inspect.select_job_ids`)."""
        return await self._run(inspect_ops.select_job_ids(where, after_id, upto_id, limit))

    async def count_matching(self, where: JobFilter, upto_id: int) -> int:
        """How many jobs up to `upto_id` match `where`."""
        return await self._run(inspect_ops.count_matching(where, upto_id))

    async def known_names(self) -> dict[str, list[str]]:
        """Queues and nodes seen (see `inspect.known_names`)."""
        return await self._run(inspect_ops.known_names())

    # -- testing helpers (testing.py) ----------------------------------------------------
    async def enqueued_jobs(self, **filters: Any) -> list[Job]:
        """Available or scheduled jobs matching `filters` (see `testing.enqueued_jobs`)."""
        return await self._run(testing_ops.enqueued_jobs(**filters))

    async def claim_jobs(
        self, ids: Sequence[int], node: str, producer: str, conn: Any = None
    ) -> list[RunningJob]:
        """Start these jobs now (inline mode), on `conn` when given."""
        return await self._run(testing_ops.claim_jobs(ids, node, producer), conn)

    async def insert_claimed(
        self, jobs: Sequence[Job], node: str, producer: str, conn: Any = None
    ) -> tuple[list[Job], list[RunningJob]]:
        """Insert jobs and claim the new ones in one transaction (inline mode)."""
        route = self._route(self.sql.insert_channel)
        return await self._run(testing_ops.insert_claimed(jobs, node, producer, route), conn)

    async def available_ids(self, queue: str) -> list[int]:
        """The queue's available jobs, in fetch order."""
        return await self._run(testing_ops.available_ids(queue))

    async def stage_queue_now(self, queue: str) -> None:
        """Make the queue's scheduled and retryable jobs available now."""
        await self._run(testing_ops.stage_queue_now(queue))
