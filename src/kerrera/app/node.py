"""`Node`: what runs on a node, from `Kerrera.start()` to `Kerrera.stop()`.

The queues' producers, the executor and its threads, queue control, the lifeline, the
leadership and the leader's services, job events for subscribers, and the routing of
every notification to the part that owns it. The `Kerrera` facade builds one when it
starts with queues or a crontab, and holds none of this itself.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from kerrera import telemetry
from kerrera.core import codec
from kerrera.core.config import Config
from kerrera.core.errors import ConfigError
from kerrera.core.options import check_queue
from kerrera.engine.postgres import PostgresEngine
from kerrera.events.pubsub import NodeEvents
from kerrera.notifier import Notifier
from kerrera.peer import Peer
from kerrera.queue import DaemonThreadPool, Executor, Producer, Threads
from kerrera.queue.control import QueueControl
from kerrera.services import Cron, Leadership, Lifeline, Pruner, Reindexer, Stager
from kerrera.services.stats import JobStats

log = logging.getLogger("kerrera")

#: Seconds any one step of `stop()` may take (beyond the grace period) before it is
#: abandoned with an error in the log.
STEP_LIMIT = 10.0


class Node:
    """The running parts of one node, and the notifications that drive them."""

    def __init__(
        self, config: Config, name: str, engine: PostgresEngine, notifier: Notifier,
        peer: Peer, producers: dict[str, Producer],
    ) -> None:  # fmt: skip
        self.config = config
        self.name = name
        self.engine = engine
        self.notifier = notifier
        self.peer = peer
        #: Running producers by queue (the facade's `producers` is this dict).
        self.producers = producers
        self.threads = DaemonThreadPool(config.threads)
        self.executor = Executor(self.threads, name)
        self.events = NodeEvents(notifier, engine.sql.events_channel)
        self.lifeline: Lifeline | None = None
        self.control: QueueControl | None = None
        self.leadership: Leadership | None = None
        self.services: list[Any] = []  # leader-only services, stopped in reverse
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen, heartbeat, start the queues (persisted commands win over the
        configuration), elect, and start the services. Every step that talks to the
        database is bounded: the loops retry on their own."""
        c, engine, notifier = self.config, self.engine, self.notifier
        telemetry.start_job_log()  # a line per job outcome on `kerrera.jobs` (stop_job_log)
        notifier.listen(engine.sql.insert_channel, self.on_insert)
        notifier.listen(engine.sql.signal_channel, self.on_signal)
        notifier.listen(engine.sql.leader_channel, self.on_leader)
        notifier.listen(engine.sql.control_channel, self.on_control)
        notifier.on_status(self.on_notifier_status)
        await notifier.start()
        self.background(self.ask_watchers())
        self.lifeline = Lifeline(
            engine, self.producer_rows, heartbeat_interval=c.heartbeat_interval,
            producer_ttl=c.producer_ttl, rescue_interval=c.rescue_interval,
            rescue_after=c.rescue_after, node=self.name,
        )  # fmt: skip
        await bounded(self.lifeline.start(), 3 * STEP_LIMIT, "the first heartbeat")
        self.control = QueueControl(
            engine, self.name, c.queues, self.producers, self.new_producer, self.beat,
            c.shutdown_grace_period, interval=c.heartbeat_interval,
        )  # fmt: skip
        try:
            await self.control.refresh()
        except Exception as exc:  # the periodic reconcile starts the queues then
            log.warning("could not start the queues yet (%s); retrying", exc)
        self.control.start()
        await self._start_services()
        queues = {q: p.limit for q, p in self.producers.items()}
        log.info("node %s started queues %s", self.name, queues)

    async def _start_services(self) -> None:
        c, engine = self.config, self.engine
        leadership = Leadership(
            self.peer, self.name, lease=c.leader_lease, eligible=c.leader,
            on_change=self.on_leadership,
        )  # fmt: skip
        self.leadership = leadership
        stager = Stager(
            engine, self.wake_queue, interval=c.stage_interval,
            should_run=lambda: leadership.is_leader, node=self.name,
        )  # fmt: skip
        services: list[Any] = [stager]
        if any(age is not None for age in c.prune_max_age.values()):
            pruner = Pruner(
                engine, leadership, c.prune_max_age, interval=c.prune_interval,
                limit=c.prune_limit,
            )  # fmt: skip
            services.append(pruner)
        if c.crontab:
            services.append(Cron(engine, leadership, c.crontab, catch_up=c.cron_catch_up))
        if c.reindex_schedule is not None:
            services.append(Reindexer(engine, leadership, c.reindex_schedule))
        if c.stats_interval is not None:  # every node counts its own jobs
            services.append(JobStats(engine, self.name, interval=c.stats_interval))
        self.services = services
        # One election first, so that a lone node leads at once.
        await bounded(leadership.start(), 3 * STEP_LIMIT, "the first election")
        for service in services:
            service.start()

    async def stop(self, grace: float, *, exiting: bool) -> int:
        """Stop everything in order (see `Kerrera.stop`); returns how many running jobs
        were cancelled and put back. Every step is bounded: a stop always returns."""
        if self.control is not None:  # no command may start a queue from here on
            self.control.close()
            await bounded(self.control.stop(), STEP_LIMIT, "stopping queue control")
        for service in reversed(self.services):
            await bounded(service.stop(), STEP_LIMIT, f"stopping {type(service).__name__}")
        self.services = []
        if self.leadership is not None:  # resign now: another node takes over at once
            await bounded(self.leadership.stop(), STEP_LIMIT, "resigning leadership")
        # Queues draining after stop_queue get this stop's grace too, not their own.
        producers = self.all_producers()
        threads = Threads.ABANDON if exiting else Threads.LEAVE
        stops = asyncio.gather(*(p.stop(grace, threads=threads) for p in producers))
        released: int = sum(await bounded(stops, grace + 2 * STEP_LIMIT, "draining") or [0])
        if self.control is not None:
            await bounded(self.control.wait_stopped(), grace + STEP_LIMIT, "queue control")
        if self.lifeline is not None:  # heartbeats went on while the queues drained
            # A producer that left jobs executing keeps its row: once it expires, the
            # lifeline elsewhere rescues those jobs (not only after rescue_after).
            uuids = [p.uuid for p in producers if p.clean]
            await bounded(self.lifeline.stop(uuids), STEP_LIMIT, "stopping the lifeline")
            self.lifeline = None
        await bounded(self.notifier.stop(), STEP_LIMIT, "stopping the notifier")
        self.threads.shutdown()
        self.producers.clear()
        telemetry.stop_job_log()
        return released

    def hurry(self) -> None:
        """During `stop()`: cancel running jobs now (a second SIGTERM)."""
        for producer in self.all_producers():
            producer.hurry()

    # -- producers ------------------------------------------------------------------------
    def producer(self, queue: str) -> Producer:
        """The producer of `queue` on this node (a clear error if it does not run)."""
        check_queue(queue)
        try:
            return self.producers[queue]
        except KeyError:
            raise ConfigError(f"queue {queue!r} is not running on node {self.name}") from None

    def all_producers(self) -> list[Producer]:
        """Running producers and those still draining after stop_queue."""
        draining = list(self.control.draining.values()) if self.control is not None else []
        return [*self.producers.values(), *draining]

    def producer_rows(self) -> list[tuple[str, str, str, str]]:
        """What each producer reports in its heartbeat: (uuid, node, queue, state)."""
        rows = []
        for p in self.all_producers():
            state = {
                "limit": p.limit, "running": len(p.running), "paused": p.paused,
                "started": not p.stopping, "counts": p.counts,
            }  # fmt: skip
            rows.append((p.uuid, self.name, p.queue, codec.dumps(state)))
        return rows

    def new_producer(
        self, queue: str, limit: int, paused: bool, predecessors: list[Producer]
    ) -> Producer:
        """A producer for queue control to start."""
        return Producer(
            queue, limit, engine=self.engine, executor=self.executor, node=self.name,
            poll_interval=self.config.poll_interval, paused=paused,
            predecessors=predecessors, events=self.events,
        )  # fmt: skip

    async def beat(self, required: bool = False) -> None:
        """Heartbeat now (after a queue change, or when asked to report). A failure is
        logged, or raised when `required` (new producers must not start without it)."""
        if self.config.sync_threads is None:
            # Sync workers get as many threads as the queues can now run (at most 64).
            total = sum(p.limit for p in self.producers.values())
            self.threads.size = max(self.threads.size, min(64, total))
        if self.lifeline is not None:
            try:
                await self.lifeline.beat()
            except Exception as exc:  # the periodic heartbeat catches up
                if required:
                    raise
                log.warning("heartbeat failed (%s)", exc)

    def background(self, coro: Any) -> None:
        """Run `coro` as a task this node keeps a reference to."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def wake_queue(self, queue: str) -> None:
        """Jobs of `queue` may be available."""
        producer = self.producers.get(queue)
        if producer is not None:
            producer.wake()

    # -- notification routing -------------------------------------------------------------
    def on_insert(self, _channel: str, message: dict[str, Any]) -> None:
        """`insert`: wake the queue's producer."""
        queue = message.get("queue")
        if isinstance(queue, str):
            self.wake_queue(queue)

    def on_signal(self, _channel: str, message: dict[str, Any]) -> None:
        """`signal` (Oban's): queue control owns the producers, pkill's targets too."""
        if self.control is not None:
            self.control.on_signal(message)

    def on_leader(self, _channel: str, message: dict[str, Any]) -> None:
        """`leader`: a leader resigned; try to take over now."""
        if self.leadership is not None and message.get("down") == self.leadership.name:
            self.leadership.wake()

    def on_control(self, _channel: str, message: dict[str, Any]) -> None:
        """Kerrera's control channel: report, watch announcements, queue commands."""
        action = message.get("action")
        if action == "report":
            self.background(self.beat())
        elif action == "watch":
            self.events.watching.heard()
        elif action == "queue" and self.control is not None:
            self.control.on_command(message)

    async def ask_watchers(self) -> None:
        """Ask open subscriptions to announce themselves (a node that just started or
        reconnected would otherwise publish no job events for a few seconds)."""
        try:
            await self.notifier.notify(self.engine.sql.control_channel, {"action": "watchers"})
        except Exception as exc:  # their next periodic announcement reaches us anyway
            log.debug("could not ask for subscribers (%s)", exc)

    def on_leadership(self, leading: bool) -> None:
        """Leadership changed hands: a new leader's cron catches up the ticks owed."""
        if leading:
            for service in self.services:
                if isinstance(service, Cron):
                    service.wake()

    def on_notifier_status(self, up: bool) -> None:
        """Notifications came back: catch up on what was inserted, signalled or watched
        while this node was deaf."""
        if telemetry.active("notifier.switch"):
            telemetry.execute("notifier.switch", {}, {"up": up, "node": self.name})
        if up:
            self.background(self.ask_watchers())
            for producer in self.producers.values():
                producer.wake()
            if self.control is not None:
                self.control.refresh_soon()


async def bounded(step: Any, seconds: float, what: str) -> Any:
    """Await `step` for at most `seconds`; on timeout log an error and return None."""
    try:
        return await asyncio.wait_for(step, seconds)
    except TimeoutError:
        log.error("%s did not finish within %.0fs; going on", what, seconds)
        return None
