"""`Kerrera`: one instance per process, for inserting jobs and (with queues) running them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, overload

import psycopg

from kerrera import _json, telemetry
from kerrera._config import Config
from kerrera._context import _CURRENT, set_last_started
from kerrera._control import QueueControl, queue_command
from kerrera._embedded import resolve_dsn
from kerrera._errors import ConfigError
from kerrera._events import app_message
from kerrera._ids import as_ids, one_or_many
from kerrera._insert_events import inserts_watched, observe_insert
from kerrera._inspect import InspectMixin
from kerrera._job import Job
from kerrera._options import check_jobs, check_queue
from kerrera._pubsub import Hub, NodeEvents, Subscription
from kerrera._schema import check_schema, migrate_sync
from kerrera._sync import SyncKerrera
from kerrera.engine.postgres import PostgresEngine
from kerrera.notifier import Notifier, make_notifier
from kerrera.queue import DaemonThreadPool, Executor, Producer, Threads
from kerrera.services import Cron, Leadership, Lifeline, Pruner, Reindexer, Stager
from kerrera.services.leader import PEER_NAME
from kerrera.testing._mode import current_mode
from kerrera.testing._runner import Runner

log = logging.getLogger("kerrera")


class Kerrera(InspectMixin):
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
        leader: bool = True,
        leader_lease: float = 30.0,
        crontab: Sequence[tuple[Any, ...]] | None = None,
        cron_catch_up: float = 300.0,
        prune_max_age: float | Mapping[str, float | None] | None = 7 * 86400.0,
        prune_interval: float = 30.0,
        prune_limit: int = 10_000,
        reindex_schedule: str | None = "@daily",
        progress_interval: float = 0.25,
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
            data_dir=data_dir, notifier=notifier, leader=leader, leader_lease=leader_lease,
            crontab=crontab or (), cron_catch_up=cron_catch_up, prune_max_age=prune_max_age,
            prune_interval=prune_interval, prune_limit=prune_limit,
            reindex_schedule=reindex_schedule, progress_interval=progress_interval,
            testing=testing,
        )  # fmt: skip
        self.node = self.config.node
        self.producers: dict[str, Producer] = {}
        self._engine: PostgresEngine | None = None
        self._notifier: Notifier | None = None
        self._services: list[Any] = []  # leader-only services, stopped in reverse
        self._leadership: Leadership | None = None
        self._control: QueueControl | None = None
        self._executor: Executor | None = None
        self._lifeline: Lifeline | None = None
        self._threads: DaemonThreadPool | None = None
        self._open_lock: asyncio.Lock | None = None
        self._dsn: str | None = None
        self._running = False
        self._sync: SyncKerrera | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._hub: Hub | None = None
        self._inline: Runner | None = None
        self._events: NodeEvents | None = None
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
        _CURRENT.set(self)  # tasks created from here on (producers, jobs) inherit it
        set_last_started(self)
        c = self.config
        if (not c.queues and not c.crontab) or self.testing_mode is not None:
            return
        self._threads = DaemonThreadPool(c.threads)
        self._executor = Executor(self._threads, self.node)
        notifier = await self._open_notifier()
        self._events = NodeEvents(notifier, engine.sql.events_channel)
        notifier.listen(engine.sql.insert_channel, self._on_insert)
        notifier.listen(engine.sql.signal_channel, self._on_signal)
        notifier.listen(engine.sql.leader_channel, self._on_leader)
        notifier.listen(engine.sql.control_channel, self._on_control)
        notifier.on_status(self._on_notifier_status)
        await notifier.start()
        self._background(self._ask_watchers())
        self._lifeline = Lifeline(
            engine, self._producer_rows, heartbeat_interval=c.heartbeat_interval,
            producer_ttl=c.producer_ttl, rescue_interval=c.rescue_interval,
            rescue_after=c.rescue_after, node=self.node,
        )  # fmt: skip
        await _bounded(self._lifeline.start(), 3 * STEP_LIMIT, "the first heartbeat")
        self._control = QueueControl(
            engine, self.node, c.queues if c.queues else {}, self.producers,
            self._new_producer, self._beat, c.shutdown_grace_period,
            interval=c.heartbeat_interval,
        )  # fmt: skip
        try:
            await self._control.refresh()  # persisted operator commands win over the config
        except Exception as exc:  # the periodic reconcile below starts the queues then
            log.warning("could not start the queues yet (%s); retrying", exc)
        self._control.start()
        await self._start_services(engine)
        log.info(
            "node %s started queues %s", self.node, {q: p.limit for q, p in self.producers.items()}
        )

    async def _start_services(self, engine: PostgresEngine) -> None:
        c = self.config
        leadership = Leadership(
            engine,
            self.node,
            lease=c.leader_lease,
            eligible=c.leader,
            on_change=self._on_leadership,
        )
        self._leadership = leadership
        services: list[Any] = [
            Stager(
                engine,
                self._wake_queue,
                interval=c.stage_interval,
                should_run=lambda: leadership.is_leader,
                node=self.node,
            )
        ]
        if any(age is not None for age in c.prune_max_age.values()):
            services.append(
                Pruner(
                    engine,
                    leadership,
                    c.prune_max_age,
                    interval=c.prune_interval,
                    limit=c.prune_limit,
                )
            )
        if c.crontab:
            services.append(Cron(engine, leadership, c.crontab, catch_up=c.cron_catch_up))
        if c.reindex_schedule is not None:
            services.append(Reindexer(engine, leadership, c.reindex_schedule))
        self._services = services
        # One election first, so a lone node leads at once (bounded, like every start step
        # that talks to the database: the loops retry on their own).
        await _bounded(leadership.start(), 3 * STEP_LIMIT, "the first election")
        for service in services:
            service.start()

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
        # Every step is bounded: a stop must always return, even if one part hangs.
        if self._control is not None:  # no command may start a queue from here on
            self._control.close()
            await _bounded(self._control.stop(), STEP_LIMIT, "stopping queue control")
        for service in reversed(self._services):
            await _bounded(service.stop(), STEP_LIMIT, f"stopping {type(service).__name__}")
        self._services = []
        if self._leadership is not None:  # resign now: another node takes over at once
            await _bounded(self._leadership.stop(), STEP_LIMIT, "resigning leadership")
        # Queues draining after stop_queue get this stop's grace too, not their own.
        producers = self._all_producers()
        threads = Threads.ABANDON if exiting else Threads.LEAVE
        stops = asyncio.gather(*(p.stop(grace, threads=threads) for p in producers))
        released: int = sum(await _bounded(stops, grace + 2 * STEP_LIMIT, "draining") or [0])
        if self._control is not None:
            await _bounded(self._control.wait_stopped(), grace + STEP_LIMIT, "queue control")
        if self._lifeline is not None:  # heartbeats went on while the queues drained
            # A producer whose last acks could not be written keeps its row: once it
            # expires, the lifeline elsewhere rescues those jobs (not after rescue_after).
            uuids = [p.uuid for p in producers if p.clean]
            await _bounded(self._lifeline.stop(uuids), STEP_LIMIT, "stopping the lifeline")
            self._lifeline = None
        if self._notifier is not None:
            await _bounded(self._notifier.stop(), STEP_LIMIT, "stopping the notifier")
        if self._threads is not None:
            self._threads.shutdown()
        await _bounded(self._close_connections(), STEP_LIMIT, "closing connections")
        self.producers.clear()
        log.info("node %s stopped (%d job(s) put back)", self.node, released)
        return released

    def hurry(self) -> None:
        """During `stop()`: stop waiting for running jobs and put them back to available
        now (what a second SIGTERM does to `kerrera start`)."""
        for producer in self._all_producers():
            producer.hurry()

    async def _close_engine(self) -> None:
        """Close the async engine only (the sync face lives on): part of every close, and
        alone when the engine was opened on a private loop that is about to end (sync
        testing helpers)."""
        notifier, self._notifier = self._notifier, None
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
        if self.testing_mode == "inline":
            return await self._runner().insert_inline(batch, conn)
        if not inserts_watched():
            return await engine.insert_jobs(batch, conn)
        with observe_insert(batch) as done:
            return done(await engine.insert_jobs(batch, conn))

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
        changes, signal = queue_command(action, queue, node, limit)
        engine = await self._open()
        await engine.set_queue_state(queue, node or "", changes, signal)
        if self._control is not None and node in (None, self.node):
            await self._control.refresh((action, queue))  # applied here before returning

    def _grow_threads(self) -> None:
        if self._threads is not None and self.config.sync_threads is None:
            # Sync workers get as many threads as the queues can now run (at most 64).
            total = sum(p.limit for p in self.producers.values())
            self._threads.size = max(self._threads.size, min(64, total))

    def check_queue(self, queue: str) -> dict[str, Any]:
        """`queue` on this node: `limit`, `running` (a count), `running_ids`, `paused`,
        `started`, `node`, `uuid` (the producer's, as in `attempted_by`), `started_at`."""
        return self._producer(queue).check()

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
            info.update(_json.loads(state) if state else {})
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
        return self._leadership is not None and self._leadership.is_leader

    async def leader(self) -> str | None:
        """The node that holds Kerrera's leadership lease now, if any."""
        return await (await self._open()).get_leader(PEER_NAME)

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

    def _all_producers(self) -> list[Producer]:
        """Running producers and those still draining after stop_queue."""
        draining = list(self._control.draining.values()) if self._control is not None else []
        return [*self.producers.values(), *draining]

    def _producer_rows(self) -> list[tuple[str, str, str, str]]:
        rows = []
        for p in self._all_producers():
            state = {
                "limit": p.limit,
                "running": len(p.running),
                "paused": p.paused,
                "started": not p.stopping,
                "counts": p.counts,
            }
            rows.append((p.uuid, self.node, p.queue, _json.dumps(state)))
        return rows

    def _new_producer(
        self, queue: str, limit: int, paused: bool, predecessors: list[Producer]
    ) -> Producer:
        assert self._executor is not None and self._engine is not None
        return Producer(
            queue, limit, engine=self._engine, executor=self._executor, node=self.node,
            poll_interval=self.config.poll_interval, paused=paused,
            predecessors=predecessors, events=self._events,
        )  # fmt: skip

    async def _beat(self, required: bool = False) -> None:
        """Heartbeat now (after a queue change, or when asked to report). A failure is
        logged, or raised when `required` (new producers must not start without it)."""
        self._grow_threads()
        if self._lifeline is not None:
            try:
                await self._lifeline.beat()
            except Exception as exc:  # the periodic heartbeat catches up
                if required:
                    raise
                log.warning("heartbeat failed (%s)", exc)

    def _background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _wake_queue(self, queue: str) -> None:
        producer = self.producers.get(queue)
        if producer is not None:
            producer.wake()

    def _on_insert(self, _channel: str, message: dict[str, Any]) -> None:
        queue = message.get("queue")
        if isinstance(queue, str):
            self._wake_queue(queue)

    def _on_signal(self, _channel: str, message: dict[str, Any]) -> None:
        if self._control is not None:  # (it owns the producers, pkill's targets included)
            self._control.on_signal(message)

    def _on_leader(self, _channel: str, message: dict[str, Any]) -> None:
        if self._leadership is not None and message.get("down") == self._leadership.name:
            self._leadership.wake()

    def _on_control(self, _channel: str, message: dict[str, Any]) -> None:
        action = message.get("action")
        if action == "report":
            self._background(self._beat())
        elif action == "watch" and self._events is not None:
            self._events.watching.heard()
        elif action == "queue" and self._control is not None:
            self._control.on_command(message)

    async def _ask_watchers(self) -> None:
        """Ask open subscriptions to announce themselves (a node that just started or
        reconnected would otherwise publish no job events for a few seconds)."""
        try:
            notifier = await self._open_notifier()
            await notifier.notify(self.engine.sql.control_channel, {"action": "watchers"})
        except Exception as exc:  # their next periodic announcement reaches us anyway
            log.debug("could not ask for subscribers (%s)", exc)

    def _on_leadership(self, leading: bool) -> None:
        if leading:
            for service in self._services:
                if isinstance(service, Cron):
                    service.wake()  # catch up the ticks owed since the last leader

    def _on_notifier_status(self, up: bool) -> None:
        if telemetry.active("notifier.switch"):
            telemetry.execute("notifier.switch", {}, {"up": up, "node": self.node})
        if up:  # catch up on anything inserted, signalled or watched while we were deaf
            self._background(self._ask_watchers())
            for producer in self.producers.values():
                producer.wake()
            if self._control is not None:
                self._control.refresh_soon()


#: Seconds any one step of `stop()` may take (beyond the grace period) before it is
#: abandoned with an error in the log.
STEP_LIMIT = 10.0


async def _bounded(step: Any, seconds: float, what: str) -> Any:
    """Await `step` for at most `seconds`; on timeout log an error and return None."""
    try:
        return await asyncio.wait_for(step, seconds)
    except TimeoutError:
        log.error("%s did not finish within %.0fs; going on", what, seconds)
        return None
