"""`Kerrera`: one instance per process, for inserting jobs and (with queues) running them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any, overload

import psycopg

from kerrera._config import Config
from kerrera._context import _CURRENT
from kerrera._embedded import resolve_dsn
from kerrera._errors import ConfigError
from kerrera._ids import as_ids, one_or_many
from kerrera._job import Job
from kerrera._options import check_jobs, check_queue
from kerrera._schema import check_schema, migrate_sync
from kerrera._sync import SyncKerrera
from kerrera.engine.postgres import PostgresEngine
from kerrera.notifier import IsolatedNotifier, Notifier, PostgresNotifier
from kerrera.queue import DaemonThreadPool, Executor, Producer
from kerrera.services import Lifeline, Stager

log = logging.getLogger("kerrera")

class Kerrera:
    """A Kerrera instance: inserts jobs and, when it has queues, runs them.

    Options (all keyword, validated here; an unknown one is an error that suggests the
    closest real name):
      dsn: PostgreSQL URL. Default: `KERRERA_DATABASE_URL`, then `DATABASE_URL`, then an
        embedded PostgreSQL kept in `data_dir`.
      queues: {"queue": limit} to run on this node ({} : insert and manage only).
      prefix ("public"): the schema that holds the tables.
      node (hostname-pid): this node's name, stored in `attempted_by`.
      migrate (True): bring the schema up to date at start; False refuses to start on an
        out-of-date schema and says which command to run.
      shutdown_grace_period (15 s): how long `stop()` waits for running jobs before
        putting them back to `available` (their attempt not spent).
      poll_interval (1 s): how often producers look for jobs without a notification.
      stage_interval (1 s): how often due scheduled/retryable jobs are made available.
      heartbeat_interval (10 s), producer_ttl (30 s), rescue_interval (15 s): a node's
        producers heartbeat; jobs of producers silent for producer_ttl are rescued
        (back to available) by the lifeline that runs on every node.
      rescue_after (3600 s): executing jobs of producers that never heartbeated here (an
        Elixir node, say) are rescued only after this long.
      pool_size (10): database connections per node.
      sync_threads (sum of limits, at most 64): threads for sync workers.
      data_dir (".kerrera"): where the embedded PostgreSQL keeps its data.
      notifier ("postgres"): "isolated" keeps notifications in-process.

    Example:
        app = Kerrera(queues={"default": 10, "media": 2})
        async with app:
            await app.insert(separate_stems.new({"track_id": 7}))
            ...  # jobs run until the block exits, then stop() drains
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        queues: dict[str, int] | None = None,
        prefix: str = "public",
        node: str | None = None,
        migrate: bool = True,
        shutdown_grace_period: float = 15.0,
        poll_interval: float = 1.0,
        stage_interval: float = 1.0,
        heartbeat_interval: float = 10.0,
        producer_ttl: float = 30.0,
        rescue_interval: float = 15.0,
        rescue_after: float = 3600.0,
        pool_size: int = 10,
        sync_threads: int | None = None,
        data_dir: str = ".kerrera",
        notifier: str = "postgres",
        **unknown: Any,
    ) -> None:
        if unknown:
            raise Config.unknown(unknown)
        self.config = Config(
            dsn=dsn, queues=queues or {}, prefix=prefix, node=node or "", migrate=migrate,
            shutdown_grace_period=shutdown_grace_period, poll_interval=poll_interval,
            stage_interval=stage_interval, heartbeat_interval=heartbeat_interval,
            producer_ttl=producer_ttl, rescue_interval=rescue_interval,
            rescue_after=rescue_after, pool_size=pool_size, sync_threads=sync_threads,
            data_dir=data_dir, notifier=notifier,
        )  # fmt: skip
        self.node = self.config.node
        self.producers: dict[str, Producer] = {}
        self._engine: PostgresEngine | None = None
        self._notifier: Notifier | None = None
        self._stager: Stager | None = None
        self._lifeline: Lifeline | None = None
        self._threads: DaemonThreadPool | None = None
        self._open_lock: asyncio.Lock | None = None
        self._dsn: str | None = None
        self._running = False
        self._sync: SyncKerrera | None = None

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def dsn(self) -> str:
        """The database URL in use (resolving the embedded default on first use)."""
        if self._dsn is None:
            self._dsn = resolve_dsn(self.config.dsn, self.config.data_dir)
        return self._dsn

    @property
    def engine(self) -> PostgresEngine:
        """The storage engine (available once started or after a first insert)."""
        if self._engine is None:
            raise RuntimeError(
                "Kerrera is not started: use `async with app` or `await app.start()`"
            )
        return self._engine

    async def migrate(self) -> list[int]:
        """Bring the schema up to date; return the migration versions applied."""
        dsn = await asyncio.to_thread(lambda: self.dsn)
        return await asyncio.to_thread(migrate_sync, dsn, self.config.prefix)

    async def _open(self) -> PostgresEngine:
        if self._engine is not None:
            return self._engine
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if self._engine is None:
                dsn = await asyncio.to_thread(lambda: self.dsn)
                if self.config.migrate:
                    await self.migrate()
                else:
                    await asyncio.to_thread(check_schema, dsn, self.config.prefix)
                engine = PostgresEngine(dsn, self.config.prefix, pool_size=self.config.pool_size)
                await engine.open()
                self._engine = engine
        return self._engine

    async def start(self) -> None:
        """Connect, migrate (unless `migrate=False`) and start this node's queues."""
        if self._running:
            return
        engine = await self._open()
        self._running = True
        _CURRENT.set(self)  # tasks created from here on (producers, jobs) inherit it
        if not self.config.queues:
            return
        self._threads = DaemonThreadPool(self.config.threads)
        executor = Executor(self._threads)
        for queue, limit in self.config.queues.items():
            self.producers[queue] = Producer(
                queue, limit, engine=engine, executor=executor, node=self.node,
                poll_interval=self.config.poll_interval,
            )  # fmt: skip
        notifier: Notifier = (PostgresNotifier(engine) if self.config.notifier == "postgres"
                              else IsolatedNotifier())
        notifier.listen(engine.sql.insert_channel, self._on_insert)
        notifier.listen(engine.sql.signal_channel, self._on_signal)
        notifier.on_status(self._on_notifier_status)
        self._notifier = notifier
        await notifier.start()
        c = self.config
        self._lifeline = Lifeline(
            engine, self._producer_rows, heartbeat_interval=c.heartbeat_interval,
            producer_ttl=c.producer_ttl, rescue_interval=c.rescue_interval,
            rescue_after=c.rescue_after,
        )  # fmt: skip
        await self._lifeline.start()  # heartbeats first: no job is fetched by a nobody
        for producer in self.producers.values():
            producer.start()
        self._stager = Stager(engine, self._wake_queue, interval=self.config.stage_interval)
        self._stager.start()
        log.info("node %s started queues %s", self.node, dict(self.config.queues))

    async def stop(self, grace: float | None = None) -> int:
        """Stop fetching, wait up to `grace` (default `shutdown_grace_period`) for running
        jobs, put the rest back to available, and close. Returns how many were put back."""
        if not self._running:  # used only to insert: just close the connections
            await self._close_connections()
            return 0
        self._running = False
        grace = self.config.shutdown_grace_period if grace is None else grace
        if self._stager is not None:
            await self._stager.stop()
        released = sum(await asyncio.gather(*(p.stop(grace) for p in self.producers.values())))
        if self._lifeline is not None:  # heartbeats went on while the queues drained
            await self._lifeline.stop([p.uuid for p in self.producers.values()])
            self._lifeline = None
        if self._notifier is not None:
            await self._notifier.stop()
        if self._threads is not None:
            self._threads.shutdown()
        await self._close_connections()
        self.producers.clear()
        log.info("node %s stopped (%d job(s) put back)", self.node, released)
        return released

    async def _close_connections(self) -> None:
        if self._engine is not None:
            await self._engine.close()
            self._engine = None
        if self._sync is not None:
            self._sync.close()

    async def __aenter__(self) -> Kerrera:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        await self.stop()

    # -- inserting ------------------------------------------------------------------------
    async def insert(self, job: Job, *, conn: psycopg.AsyncConnection[Any] | None = None) -> Job:
        """Insert one job; on `conn`, it commits or rolls back with the caller's transaction.

        Example: `job = await app.insert(Mailer.new({"to": "a@b.c"}), conn=conn)`.
        """
        return (await self.insert_all([job], conn=conn))[0]

    async def insert_all(
        self, jobs: Iterable[Job], *, conn: psycopg.AsyncConnection[Any] | None = None
    ) -> list[Job]:
        """Insert many jobs, one statement per batch of 5,000; returns them saved, in order."""
        batch = check_jobs(jobs)
        if not batch:
            return []
        engine = await self._open()
        return await engine.insert_jobs(batch, conn)

    async def complete_job(self, job: Job, *, conn: psycopg.AsyncConnection[Any]) -> bool:
        """Mark the running `job` completed inside the caller's transaction on `conn`.

        This gives an exactly-once *effect*: the job's own writes and its completion commit
        or roll back together. It returns False when this attempt no longer owns the job
        (cancelled, or put back and run elsewhere): roll back then.

        Example (inside a worker):
            async with conn.transaction():
                await conn.execute("UPDATE accounts SET paid = true WHERE id = %s", (n,))
                if not await current_app().complete_job(job, conn=conn):
                    raise RuntimeError("lost the job; rolling back")
        """
        if job.id is None:
            raise ConfigError("complete_job needs a saved, running job")
        return await (await self._open()).complete_job(job.id, job.attempt, conn)

    # -- managing -------------------------------------------------------------------------
    async def get_job(self, job_id: int) -> Job | None:
        """The job with this id, or None."""
        found = await (await self._open()).get_jobs([job_id])
        return found[0] if found else None

    @overload
    async def retry_job(self, ids: int) -> Job | None: ...
    @overload
    async def retry_job(self, ids: Sequence[int]) -> list[Job]: ...
    async def retry_job(self, ids: int | Sequence[int]) -> Job | list[Job] | None:
        """Make jobs that are not executing available now (spent attempts get one more)."""
        return one_or_many(ids, await (await self._open()).retry_jobs(as_ids(ids)))

    @overload
    async def cancel_job(self, ids: int) -> Job | None: ...
    @overload
    async def cancel_job(self, ids: Sequence[int]) -> list[Job]: ...
    async def cancel_job(self, ids: int | Sequence[int]) -> Job | list[Job] | None:
        """Cancel unfinished jobs; an executing one is stopped on the node that runs it."""
        return one_or_many(ids, await (await self._open()).cancel_jobs(as_ids(ids)))

    @overload
    async def delete_job(self, ids: int) -> Job | None: ...
    @overload
    async def delete_job(self, ids: Sequence[int]) -> list[Job]: ...
    async def delete_job(self, ids: int | Sequence[int]) -> Job | list[Job] | None:
        """Delete jobs that are not executing; returns what was deleted."""
        return one_or_many(ids, await (await self._open()).delete_jobs(as_ids(ids)))

    def pause_queue(self, queue: str) -> None:
        """Stop fetching new jobs of `queue` on this node; running jobs go on."""
        self._producer(queue).pause()

    def resume_queue(self, queue: str) -> None:
        """Fetch jobs of `queue` on this node again."""
        self._producer(queue).resume()

    def scale_queue(self, queue: str, limit: int) -> None:
        """Change how many jobs of `queue` run at once on this node."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"option 'limit' must be an integer >= 1, got {limit!r}")
        self._producer(queue).scale(limit)
        if self._threads is not None and self.config.sync_threads is None:
            # Sync workers get as many threads as the queues can now run (at most 64).
            total = sum(p.limit for p in self.producers.values())
            self._threads.size = max(self._threads.size, min(64, total))

    def check_queue(self, queue: str) -> dict[str, Any]:
        """`queue` on this node: `limit`, `running` (a count), `running_ids`, `paused`,
        `started`, `node`, `uuid` (the producer's, as in `attempted_by`), `started_at`."""
        return self._producer(queue).check()

    @property
    def sync(self) -> SyncKerrera:
        """The same inserting and managing API for synchronous code (no event loop)."""
        if self._sync is None:
            self._sync = SyncKerrera(self)
        return self._sync

    # -- notifications --------------------------------------------------------------------
    def _producer(self, queue: str) -> Producer:
        check_queue(queue)
        try:
            return self.producers[queue]
        except KeyError:
            raise ConfigError(f"queue {queue!r} is not running on node {self.node}") from None

    def _producer_rows(self) -> list[tuple[str, str, str]]:
        return [(p.uuid, self.node, p.queue) for p in self.producers.values()]

    def _wake_queue(self, queue: str) -> None:
        producer = self.producers.get(queue)
        if producer is not None:
            producer.wake()

    def _on_insert(self, _channel: str, message: dict[str, Any]) -> None:
        queue = message.get("queue")
        if isinstance(queue, str):
            self._wake_queue(queue)

    def _on_signal(self, _channel: str, message: dict[str, Any]) -> None:
        if message.get("action") == "pkill" and type(message.get("job_id")) is int:
            for producer in self.producers.values():
                producer.kill(message["job_id"])

    def _on_notifier_status(self, up: bool) -> None:
        if up:  # catch up on anything inserted while we were deaf
            for producer in self.producers.values():
                producer.wake()
