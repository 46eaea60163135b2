"""`subscribe` and `publish`: job events, progress and messages over PostgreSQL
notifications, with no broker.

An app that subscribes keeps one listening connection (its `Hub`) and fans what it hears
out to its subscriptions. While any subscription is open the hub tells the nodes, every
few seconds, that someone watches (`watch` on the control channel): only then do
producers publish job starts and outcomes, so a cluster nobody watches pays nothing for
this. Progress is always published, since a job reports it on purpose.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
import weakref
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from kerrera.core.errors import ConfigError
from kerrera.core.job import Job, RunningJob
from kerrera.events.wire import KIND_OF_STATE, Event, decode, job_batches, job_entry, short_error
from kerrera.notifier import IsolatedNotifier, Notifier, PostgresNotifier
from kerrera.queue.producer import JobNote

if TYPE_CHECKING:
    from kerrera.engine.postgres import PostgresEngine

log = logging.getLogger("kerrera.pubsub")

#: Seconds between a hub's `watch` announcements; nodes publish job events for
#: WATCH_TTL seconds after the last one they heard.
WATCH_EVERY = 5.0
WATCH_TTL = 3 * WATCH_EVERY
#: Events a subscription holds before the oldest are dropped (a stalled consumer must
#: not grow memory without bound).
BUFFER = 10_000
WATCH_MESSAGE = {"action": "watch"}
#: Seconds after a subscription opens before the table is checked for subscribed jobs
#: that ended unseen (then again every WATCH_EVERY).
CATCH_UP_FIRST = 1.0

Target = int | str


class Subscription:
    """What `app.subscribe(...)` returns: an async iterator of `Event`s, and an async
    context manager that closes it. Events arrive in the order PostgreSQL delivered
    them; `dropped` counts events lost because the consumer fell `BUFFER` behind."""

    def __init__(self, hub: Hub, targets: tuple[Target, ...]) -> None:
        self._hub = hub
        self.targets = targets
        self._opened = False
        # Events held while the snapshots are read (None: deliver at once).
        self._held: list[Event] | None = None
        self._ids = {t for t in targets if isinstance(t, int)}
        self._ended: set[int] = set()  # job ids whose last event was delivered
        self._names = {t for t in targets if isinstance(t, str)}
        self._all = "*" in self._names
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self.dropped = 0
        self.closed = False

    def wants(self, event: Event) -> bool:
        """Whether this subscription asked for `event`."""
        if event.kind == "message":
            return self._all or event.topic in self._names
        return (
            self._all
            or event.job_id in self._ids
            or event.queue in self._names
            or f"jobs:{event.job_id}" in self._names
        )

    @property
    def waiting_for(self) -> set[int]:
        """Job ids subscribed to whose end has not been delivered yet."""
        return self._ids - self._ended

    def put(self, event: Event) -> None:
        """Deliver `event` (called by the hub). While the snapshots are being read,
        live events wait, so that a job subscription always begins with its snapshot."""
        if self._held is not None and event.kind != "snapshot":
            self._held.append(event)
            return
        self._deliver(event)

    def snapshots_done(self, snapshots: list[Event]) -> None:
        """Deliver the snapshots, then the events that arrived meanwhile, leaving out
        progress no newer than a snapshot's (the snapshot already shows it)."""
        held, self._held = self._held or [], None
        seen = {e.job_id: (e.progress or {}).get("at") for e in snapshots}
        for event in snapshots:
            self._deliver(event)
        for event in held:
            last = seen.get(event.job_id)
            at = (event.progress or {}).get("at")
            if event.kind == "progress" and last is not None and at is not None and at <= last:
                continue
            self._deliver(event)

    def _deliver(self, event: Event) -> None:
        if event.finished and event.job_id is not None:
            if event.job_id in self._ended and event.kind != "snapshot":
                return  # already ended (by a catch-up): never twice
            self._ended.add(event.job_id)
        if self._queue.qsize() >= BUFFER:
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(event)

    def close(self) -> None:
        """Stop receiving; a consumer waiting in `async for` ends."""
        if not self.closed:
            self.closed = True
            self._hub.remove(self)
            self._queue.put_nowait(None)

    def __aiter__(self) -> Subscription:
        return self

    async def open(self) -> Subscription:
        """Start listening (done by `async with` or the first `async for` step): events
        from then on are delivered. A job id target first yields a `snapshot` event
        with the job's state and latest progress, so nothing before is missed."""
        if not self._opened and not self.closed:
            await self._hub.add(self)
            self._opened = True  # only once added: a failed open can be tried again
        return self

    async def __anext__(self) -> Event:
        if not self._opened:
            await self.open()
        if self.closed and self._queue.empty():
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        return event

    async def __aenter__(self) -> Subscription:
        return await self.open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        self.close()


class Hub:
    """One app's listening connection for subscriptions (with an in-process notifier,
    the app's notifier itself: subscribers hear this process only)."""

    def __init__(self, open_engine: Callable[[], Awaitable[PostgresEngine]]) -> None:
        self._open_engine = open_engine
        self._engine: PostgresEngine | None = None
        self._notifier: Notifier | None = None
        self._own = False  # whether the hub started `_notifier` (and so stops it)
        self._subs: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._watcher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def subscribe(self, targets: tuple[Target, ...]) -> Subscription:
        """A new subscription (it listens once opened)."""
        if not targets:
            raise ConfigError("subscribe: give a job id, a queue, a topic or '*'")
        for target in targets:
            is_id = isinstance(target, int) and not isinstance(target, bool)
            if not (is_id or (isinstance(target, str) and target)):
                raise ConfigError(
                    f"subscribe: a target is a job id, a queue, a topic or '*', got {target!r}"
                )
        return Subscription(self, targets)

    async def add(self, sub: Subscription) -> None:
        """Start delivering to `sub`: listen, tell the nodes, send job snapshots."""
        engine = await self._listening()
        ids = sorted({t for t in sub.targets if isinstance(t, int) and not isinstance(t, bool)})
        sub._held = [] if ids else None
        self._subs.add(sub)
        try:
            await self._announce()
            if self._watcher is None or self._watcher.done():
                self._watcher = asyncio.create_task(self._keep_watching(), name="kerrera-watch")
            if ids:
                found = {job.id: job for job in await engine.get_jobs(ids)}
                # No such job (yet: it may be in a transaction still open): say so, with
                # no state, rather than leave the subscriber waiting without a word.
                sub.snapshots_done([
                    snapshot(found[i]) if i in found else Event("snapshot", job_id=i)
                    for i in ids
                ])  # fmt: skip
        except BaseException:
            self._subs.discard(sub)
            sub._held = None
            raise

    async def _listening(self) -> PostgresEngine:
        async with self._lock:
            if self._engine is None:
                engine = await self._open_engine()
                # LISTEN needs a connection of its own, set up with these channels (the
                # node's notifier may not listen at all); an in-process one is shared.
                shared = engine.notifier
                notifier: Notifier
                if isinstance(shared, IsolatedNotifier):
                    notifier, self._own = shared, False
                else:
                    notifier, self._own = PostgresNotifier(engine), True
                notifier.listen(engine.sql.events_channel, self._on_event)
                notifier.listen(engine.sql.control_channel, self._on_control)
                if self._own:
                    await notifier.start()
                self._engine, self._notifier = engine, notifier
            return self._engine

    def remove(self, sub: Subscription) -> None:
        """Forget a closed subscription."""
        self._subs.discard(sub)

    async def close(self) -> None:
        """Close every subscription and the connection."""
        for sub in list(self._subs):
            sub.close()
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        if self._notifier is not None:
            if self._own:
                await self._notifier.stop()
            self._notifier = self._engine = None

    def deliver(self, events: list[Event]) -> None:
        """Hand `events` to the subscriptions that want them."""
        for sub in list(self._subs):
            for event in events:
                if sub.wants(event):
                    sub.put(event)

    def _on_event(self, _channel: str, message: dict[str, Any]) -> None:
        self.deliver(decode(message))

    def _on_control(self, _channel: str, message: dict[str, Any]) -> None:
        if message.get("action") == "watchers" and self._subs:
            asyncio.get_running_loop().create_task(self._announce())

    async def _announce(self) -> None:
        engine, notifier = self._engine, self._notifier
        if engine is None or notifier is None:
            return
        try:
            await notifier.notify(engine.sql.control_channel, WATCH_MESSAGE)
        except Exception as exc:  # nodes hear the next announcement
            log.warning("could not announce subscriptions (%s)", exc)

    async def _keep_watching(self) -> None:
        # The first catch-up comes soon: a job that ended before the nodes heard the
        # first announcement published no event, so its end is read from the table.
        await asyncio.sleep(CATCH_UP_FIRST)
        await self._catch_up()
        while self._subs:
            await asyncio.sleep(WATCH_EVERY)
            if self._subs:
                await self._announce()
                await self._catch_up()

    async def _catch_up(self) -> None:
        """Deliver the end of subscribed jobs that finished without an event reaching us
        (published before any node knew we watch, or while we were disconnected)."""
        waiting = {job_id: sub for sub in list(self._subs) for job_id in sub.waiting_for}
        if not waiting or self._engine is None:
            return
        try:
            jobs = await self._engine.get_jobs(sorted(waiting))
        except Exception as exc:  # the next round tries again
            log.warning("could not check subscribed jobs (%s)", exc)
            return
        for job in jobs:
            if job.state.terminal:
                event = dataclasses.replace(snapshot(job), kind=KIND_OF_STATE[str(job.state)])
                for sub in list(self._subs):
                    if job.id in sub.waiting_for:
                        sub.put(event)


def snapshot(job: Job) -> Event:
    """A job's state now, as the first event of a job subscription."""
    progress = job.meta.get("progress") if isinstance(job.meta, dict) else None
    last = (
        job.errors[-1].get("error", "") if job.errors and isinstance(job.errors[-1], dict) else ""
    )
    return Event(
        kind="snapshot", job_id=job.id, queue=job.queue, worker=job.worker,
        attempt=job.attempt, state=str(job.state), error=short_error(str(last)) or None,
        progress=progress if isinstance(progress, dict) else None,
    )  # fmt: skip


class Watched:
    """A node's view of whether anyone subscribes (see `WATCH_TTL`)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until = -math.inf

    def heard(self) -> None:
        """A hub announced that it watches."""
        self._until = self._clock() + WATCH_TTL

    def __bool__(self) -> bool:
        return self._clock() < self._until


class NodeEvents:
    """A node's side: knows whether anyone watches, and publishes producers' batches."""

    def __init__(self, notifier: Notifier, channel: str) -> None:
        self._notifier = notifier
        self._channel = channel
        self.watching = Watched()

    @property
    def watched(self) -> bool:
        """Whether a subscriber announced itself within `WATCH_TTL`."""
        return bool(self.watching)

    async def publish(
        self, queue: str, node: str, done: list[JobNote], started: list[RunningJob]
    ) -> None:
        """Publish outcomes just written and jobs just started (failures are logged)."""
        entries = [job_entry(*note) for note in done] + [
            job_entry(j.id, "executing", j.worker, j.attempt) for j in started
        ]
        try:  # every batch in one round trip
            await self._notifier.notify(self._channel, *job_batches(queue, node, entries))
        except Exception as exc:  # events are informative; the jobs go on
            log.warning("could not publish job events of queue %s (%s)", queue, exc)
