"""`Kerrera`: one instance per process, for inserting jobs and (with queues) running them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, overload

import psycopg

from kerrera.app.compose import ComposeMixin
from kerrera.app.inspect import InspectMixin, wait_target, wait_until_finished
from kerrera.app.node import STEP_LIMIT, Node, bounded
from kerrera.app.sync import SyncKerrera
from kerrera.app.workflows import WorkflowHandle, check_workflow_mode
from kerrera.core import codec
from kerrera.core.batch import Batch
from kerrera.core.config import Config
from kerrera.core.context import CURRENT_APP, set_last_started
from kerrera.core.errors import ConfigError
from kerrera.core.ids import as_ids, one_or_many
from kerrera.core.job import Job
from kerrera.core.modes import current_mode
from kerrera.core.options import check_jobs, check_queue
from kerrera.core.worker import check_main_workers
from kerrera.core.workflow import Workflow
from kerrera.engine.embedded import resolve_dsn
from kerrera.engine.postgres import PostgresEngine
from kerrera.engine.schema import check_schema, migrate_sync
from kerrera.events.inserts import inserts_watched, observe_insert
from kerrera.events.pubsub import Hub, Subscription
from kerrera.events.wire import app_message
from kerrera.notifier import Notifier, make_notifier
from kerrera.peer import Peer, make_peer
from kerrera.queue import Producer
from kerrera.queue.control import send_queue_command
from kerrera.queue.inline import Runner

log = logging.getLogger("kerrera")


class Kerrera(InspectMixin, ComposeMixin):
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
      peer ("postgres"): where the leadership lease lives: a row of `oban_peers`, so one
        node of all those on the database leads; "isolated" keeps it in memory, so this
        app always leads (no other node is asked).
      leader (True): whether this node may lead; leader_lease (30 s). The leader alone
        runs the stager, pruner, cron and reindexer.
      crontab ([]): `[(expression, worker, {"args": ..., "queue": ..., "timezone": ...,
        "name": ...}), ...]`: standard 5-field expressions, @hourly/@daily/@weekly/
        @monthly/@yearly/@reboot; each tick is inserted once across the cluster.
      cron_catch_up (300 s): ticks missed this long ago (leader change, restart) are
        still inserted.
      prune_max_age (7 days): finished jobs older than this are deleted; a dict per
        state ({"completed": 3600, "discarded": None}) or None to keep everything.
      prune_interval (30 s), prune_limit (10,000 rows per batch).
      reindex_schedule ("@daily", UTC): when to rebuild the jobs indexes; None: never.
      progress_interval (0.25 s): a running job's `progress()` is written and published
        at most this often (the latest report always lands); 0 writes every report.
      stats_interval (5 s): each node writes its finished jobs' per-minute statistics
        (the dashboard's charts) this often; None: none are kept.
      testing (None): "inline" runs every inserted job at once in the caller, "manual"
        only inserts; either way no queues or services run (see `kerrera.testing`).

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
        peer: str = "postgres",
        leader: bool = True,
        leader_lease: float = 30.0,
        crontab: Sequence[tuple[Any, ...]] | None = None,
        cron_catch_up: float = 300.0,
        prune_max_age: float | Mapping[str, float | None] | None = 7 * 86400.0,
        prune_interval: float = 30.0,
        prune_limit: int = 10_000,
        reindex_schedule: str | None = "@daily",
        progress_interval: float = 0.25,
        stats_interval: float | None = 5.0,
        testing: str | None = None,
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
            data_dir=data_dir, notifier=notifier, peer=peer, leader=leader,
            leader_lease=leader_lease,
            crontab=crontab or (), cron_catch_up=cron_catch_up, prune_max_age=prune_max_age,
            prune_interval=prune_interval, prune_limit=prune_limit,
            reindex_schedule=reindex_schedule, progress_interval=progress_interval,
            stats_interval=stats_interval, testing=testing,
        )  # fmt: skip
        self.node = self.config.node
        self.producers: dict[str, Producer] = {}
        self._engine: PostgresEngine | None = None
        self._notifier: Notifier | None = None
        self._peer: Peer | None = None
        #: The running parts of this node (from `start` with queues or a crontab).
        self._node: Node | None = None
        self._open_lock: asyncio.Lock | None = None
        self._dsn: str | None = None
        self._running = False
        self._sync: SyncKerrera | None = None
        self._hub: Hub | None = None
        self._inline: Runner | None = None
        #: The loop this node runs on (set by `start`), for sync workers' calls into it.
        self.loop: asyncio.AbstractEventLoop | None = None

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
                # Made with the engine, so that an app that only inserts sends through it
                # too; it starts listening in `start`.
                engine.notifier = self._notifier = make_notifier(self.config.notifier, engine)
                self._peer = make_peer(self.config.peer, engine)
                self._engine = engine
        return self._engine

    async def _open_notifier(self) -> Notifier:
        """The notifier everything this app sends goes through (opening the engine)."""
        await self._open()
        assert self._notifier is not None
        return self._notifier

    async def start(self) -> None:
        """Connect, migrate (unless `migrate=False`) and start this node's queues and
        services. A node with neither queues nor a crontab only inserts and manages."""
        if self._running:
            return
        engine = await self._open()
        self._running = True
        self.loop = asyncio.get_running_loop()
        CURRENT_APP.set(self)  # tasks created from here on (producers, jobs) inherit it
        set_last_started(self)
        c = self.config
        if (not c.queues and not c.crontab) or self.testing_mode is not None:
            return
        notifier = await self._open_notifier()
        assert self._peer is not None  # made with the engine
        self._node = Node(c, self.node, engine, notifier, self._peer, self.producers)
        await self._node.start()

    async def stop(self, grace: float | None = None, *, exiting: bool = False) -> int:
        """Stop fetching, wait up to `grace` (default `shutdown_grace_period`) for running
        jobs, put the rest back to available, and close. Returns how many were put back.

        A sync job's thread cannot be stopped: a job whose thread still runs after the
        grace period is put back only once the thread has ended. Until then it stays
        `executing` (another node must not run it beside the thread), and if this app
        has stopped meanwhile, the lifeline puts it back once this node's heartbeat
        expires. Pass `exiting=True` when the process exits right after (the threads
        die with it): such jobs are then put back at once, as `kerrera start` does."""
        if not self._running:  # used only to insert: just close the connections
            await self._close_connections()
            return 0
        self._running = False
        grace = self.config.shutdown_grace_period if grace is None else grace
        released = 0
        if self._node is not None:  # (kept meanwhile: `hurry` reaches it during the stop)
            released = await self._node.stop(grace, exiting=exiting)
            self._node = None
        await bounded(self._close_connections(), STEP_LIMIT, "closing connections")
        log.info("node %s stopped (%d job(s) put back)", self.node, released)
        return released

    def hurry(self) -> None:
        """During `stop()`: stop waiting for running jobs and put them back to available
        now (what a second SIGTERM does to `kerrera start`)."""
        if self._node is not None:
            self._node.hurry()

    async def _close_engine(self) -> None:
        """Close the async engine only (the sync face lives on): part of every close, and
        alone when the engine was opened on a private loop that is about to end (sync
        testing helpers)."""
        notifier, self._notifier = self._notifier, None
        self._peer = None
        if notifier is not None:  # made with the engine, so it goes with it
            await notifier.stop()
        if self._engine is not None:
            await self._engine.close()
            self._engine = None

    async def _close_connections(self) -> None:
        if self._hub is not None:
            await self._hub.close()
            self._hub = None
        if self._inline is not None:
            self._inline.close()
            self._inline = None
        await self._close_engine()
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
    @overload
    async def insert(
        self, job: Job, *, conn: psycopg.AsyncConnection[Any] | None = None
    ) -> Job: ...
    @overload
    async def insert(
        self, job: Workflow | Batch, *, conn: psycopg.AsyncConnection[Any] | None = None
    ) -> list[Job]: ...
    async def insert(
        self, job: Job | Workflow | Batch, *, conn: psycopg.AsyncConnection[Any] | None = None
    ) -> Job | list[Job]:
        """Insert one job, or a whole `Workflow` or `Batch` (its jobs come back in order); on
        `conn`, it commits or rolls back with the caller's transaction.

        Example: `job = await app.insert(Mailer.new({"to": "a@b.c"}), conn=conn)`.
        """
        if isinstance(job, Workflow | Batch):
            return await self.insert_all(job, conn=conn)
        return (await self.insert_all([job], conn=conn))[0]

    async def insert_all(
        self, jobs: Iterable[Job] | Workflow | Batch, *,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> list[Job]:  # fmt: skip
        """Insert many jobs, one statement per batch of 5,000; returns them saved, in order.
        A `Workflow` goes in one statement (its steps, in the order they were added)."""
        if isinstance(jobs, Batch):  # its row and its jobs, in one transaction
            return await self.insert_batch(jobs, conn=conn)
        if isinstance(jobs, Workflow):
            check_workflow_mode(self.testing_mode)
            plan = jobs.plan()
            if self.testing_mode is None:
                check_main_workers(plan.jobs, self.config.queues)
            return await (await self._open()).insert_workflow(plan, conn)
        batch = check_jobs(jobs)
        if not batch:
            return []
        if self.testing_mode is None:  # a testing mode runs the jobs in this process
            check_main_workers(batch, self.config.queues)
        engine = await self._open()
        if self.testing_mode == "inline":
            return await self._runner().insert_inline(batch, conn)
        if not inserts_watched():
            return await engine.insert_jobs(batch, conn)
        with observe_insert(batch) as done:
            return done(await engine.insert_jobs(batch, conn))

    def workflow(self, workflow_id: str) -> WorkflowHandle:
        """A workflow by id: `status()`, `jobs()`, `results()`, `wait()`, `cancel()`,
        `retry()`.

        Example: `status = await app.workflow(wf.id).wait(timeout=60)`.
        """
        return WorkflowHandle(self._open, workflow_id)

    async def workflows(self, limit: int = 20) -> list[tuple[str, str | None, Any, dict[str, int]]]:
        """The newest workflows: (id, name, inserted_at, steps per state)."""
        return await (await self._open()).workflow_list(limit)

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
        engine = await self._open()
        return await engine.complete_job(job.id, job.attempt, conn, job.owner)

    # -- managing -------------------------------------------------------------------------
    async def get_job(self, job_id: int) -> Job | None:
        """The job with this id, or None."""
        found = await (await self._open()).get_jobs([job_id])
        return found[0] if found else None

    async def wait(self, job: Job | int, timeout: float | None = None) -> Job:
        """Wait until `job` (a saved job or its id) is completed, discarded or cancelled,
        and return it as stored then: `meta["return"]` holds what the worker recorded
        with `Record(value)`, `errors` why it failed. Wakes on the job's events (as
        `subscribe` does) and reads its row every few seconds too, so a lost event only
        delays the answer. Raises `TimeoutError` after `timeout` seconds (None: no
        limit), `LookupError` if there is no such job (or it is deleted meanwhile).

        Example:
            job = await app.insert(Analyse.new({"track": 7}))
            done = await app.wait(job, timeout=60)
            print(done.state, done.meta.get("return"))
        """
        job_id = wait_target(job, timeout)
        async with asyncio.timeout(timeout):
            return await wait_until_finished(self, job_id)

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

    async def pause_queue(self, queue: str, *, node: str | None = None) -> None:
        """Stop fetching new jobs of `queue` on every node (or on `node`); running jobs go
        on. The pause is persisted: it outlives restarts and deploys until resumed.

        Elixir Oban nodes on the same database obey it too, with Oban's own signal: for
        every node `"any"`, and for `node` one signal per instance name known
        (`Kerrera.<node>`, `Oban.<node>` and `<name>.<node>` for every name in
        `oban_peers`), since an Elixir node takes only its own ident. Example:
        `await app.pause_queue("media", node="worker-1")`."""
        await self._queue_command("pause", queue, node)

    async def resume_queue(self, queue: str, *, node: str | None = None) -> None:
        """Fetch jobs of `queue` again on every node (or on `node`). Elixir nodes obey it
        too, `node` included (see `pause_queue`)."""
        await self._queue_command("resume", queue, node)

    async def scale_queue(self, queue: str, limit: int, *, node: str | None = None) -> None:
        """Run at most `limit` jobs of `queue` at once per node, on every node (or on
        `node`). Persisted: it wins over the configured limit until scaled again. Elixir
        nodes obey it too, `node` included (see `pause_queue`)."""
        await self._queue_command("scale", queue, node, limit)

    async def start_queue(self, queue: str, limit: int, *, node: str | None = None) -> None:
        """Start running `queue` with `limit` on every running Kerrera node (or `node`).
        Persisted. Elixir nodes are not signalled: they cannot run Python workers."""
        await self._queue_command("start", queue, node, limit)

    async def stop_queue(self, queue: str, *, node: str | None = None) -> None:
        """Stop running `queue` on every node (or `node`): running jobs get the shutdown
        grace period, then go back to available. Persisted. Elixir nodes obey it too,
        `node` included (see `pause_queue`)."""
        await self._queue_command("stop", queue, node)

    async def _queue_command(
        self, action: str, queue: str, node: str | None, limit: int | None = None
    ) -> None:
        engine = await self._open()
        control = self._node.control if self._node is not None else None
        await send_queue_command(engine, control, self.node, action, queue, node, limit)

    def check_queue(self, queue: str) -> dict[str, Any]:
        """`queue` on this node: `limit`, `running` (a count), `running_ids`, `paused`,
        `started`, `node`, `uuid` (the producer's, as in `attempted_by`), `started_at`."""
        if self._node is None:
            check_queue(queue)
            raise ConfigError(f"queue {queue!r} is not running on node {self.node}")
        return self._node.producer(queue).check()

    async def check_all_queues(self, *, fresh: float = 1.0) -> list[dict[str, Any]]:
        """Every queue on every live node: `node`, `queue`, `limit`, `running`, `paused`,
        `started`, `uuid`, `started_at`, `updated_at`. Nodes are asked to report first and
        given up to `fresh` seconds to do so; a node that does not answer in time shows
        its last heartbeat."""
        notifier = await self._open_notifier()
        engine = self.engine
        asked = await engine.db_now()
        await notifier.notify(engine.sql.control_channel, {"action": "report"})
        deadline = asyncio.get_running_loop().time() + fresh
        while True:
            rows = await engine.producer_states(self.config.producer_ttl)
            late = [r for r in rows if r[4] < asked]
            if not late or asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(0.05)
        out = []
        for node, queue, uuid, started_at, updated_at, state in rows:
            info = {
                "node": node,
                "queue": queue,
                "uuid": uuid,
                "started_at": started_at,
                "updated_at": updated_at,
                "limit": None,
                "running": None,
                "paused": None,
                "started": True,
            }
            info.update(codec.loads(state) if state else {})
            out.append(info)
        return out

    # -- testing ------------------------------------------------------------------------
    @property
    def testing_mode(self) -> str | None:
        """The testing mode in force ("inline", "manual" or None): the innermost
        `kerrera.testing.mode()` block's, else the `testing` option."""
        return current_mode(self.config.testing)

    async def drain_queue(
        self, queue: str, *, with_scheduled: bool = False, with_recursion: bool = False,
        with_safety: bool = True,
    ) -> dict[str, int]:  # fmt: skip
        """Run `queue`'s available jobs now, one by one in the caller (whatever the
        testing mode), and return counts by outcome: completed, retryable, discarded,
        cancelled, snoozed.

        `with_scheduled` first makes scheduled and retryable jobs available, due or not;
        `with_recursion` keeps going until the queue is empty (jobs inserted by the jobs
        run too, and with `with_scheduled` retries run until they succeed or are
        discarded); `with_safety=False` re-raises a job's exception after recording it.

        Example:
            await app.insert(Mailer.new({"to": "a@b.c"}))
            assert await app.drain_queue("mail") == {"completed": 1, ...}
        """
        check_queue(queue)
        return await self._runner().drain(
            queue, with_scheduled=with_scheduled, with_recursion=with_recursion,
            with_safety=with_safety,
        )  # fmt: skip

    def _runner(self) -> Runner:
        if self._inline is None:
            self._inline = Runner(self)
        return self._inline

    # -- events -------------------------------------------------------------------------
    def subscribe(self, *targets: int | str) -> Subscription:
        """Events as they happen, from any process: for job ids (ints), queues, topics of
        `publish`, or `"*"` (every job event and message).

        A job's events are `started`, `progress`, `completed`, `retrying`, `failed`,
        `cancelled`, `snoozed` and `released`; a job id subscription begins with a
        `snapshot` of the job. Iterate with `async for`; `async with` closes it.

        Example (a web request streaming one job's progress):
            async with app.subscribe(job.id) as events:
                async for event in events:
                    send(event.kind, event.progress)
                    if event.finished:
                        break
        """
        if self._hub is None:
            self._hub = Hub(self._open)
        return self._hub.subscribe(targets)

    async def publish(self, topic: str, payload: Any) -> None:
        """Send `payload` (JSON, at most about 7.9 kB encoded) to every subscriber of
        `topic` or `"*"`, in every process. Best effort: subscribers not listening at
        that moment never see it.

        Example: `await app.publish("exports", {"user": 7, "status": "ready"})`.
        """
        text = app_message(topic, payload)  # encoded here: a payload too large fails now
        notifier = await self._open_notifier()
        await notifier.notify(self.engine.sql.events_channel, text)

    @property
    def is_leader(self) -> bool:
        """Whether this node currently leads the cluster (runs the leader-only services)."""
        leadership = self._node.leadership if self._node is not None else None
        return leadership is not None and leadership.is_leader

    async def leader(self) -> str | None:
        """The node that holds Kerrera's leadership lease now, if any."""
        await self._open()
        assert self._peer is not None  # made with the engine
        return await self._peer.leader()

    @property
    def sync(self) -> SyncKerrera:
        """The same inserting and managing API for synchronous code (no event loop)."""
        if self._sync is None:
            self._sync = SyncKerrera(self)
        return self._sync
