"""One producer per queue per node: fetch up to the limit, dispatch, bundle the acks.

The loop sleeps until something happens (a notification, a job finishing, the poll
tick), then makes one round trip that both writes the acks of every job finished since
the last trip and claims as many new jobs as there are free slots. Under load a trip
carries tens of acks and fetches, so transactions per job stay far below one.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from kerrera import telemetry
from kerrera._backoff import reconnect_backoff
from kerrera._events import job_entry
from kerrera._job import Job
from kerrera.engine.base import AckBatch, Engine
from kerrera.engine.errors import is_transient
from kerrera.queue.executor import Executor, cancelled, unwritable
from kerrera.queue.observed import outcome_state

log = logging.getLogger("kerrera.producer")


class JobEvents(Protocol):
    """Where a producer publishes job events for subscribers."""

    @property
    def watched(self) -> bool:
        """Whether anyone subscribes now (otherwise nothing is published)."""

    async def publish(
        self, queue: str, node: str, done: list[dict[str, Any]], started: list[Job]
    ) -> None:
        """Publish outcomes just written (`done`) and jobs just started; never raises."""


class Producer:
    """Runs the jobs of one queue on this node, never more than `limit` at once."""

    def __init__(
        self, queue: str, limit: int, *, engine: Engine, executor: Executor, node: str,
        poll_interval: float = 1.0, paused: bool = False,
        predecessors: list[Producer] | None = None, events: JobEvents | None = None,
    ) -> None:  # fmt: skip
        self.queue = queue
        self.limit = limit
        self.node = node
        self.uuid = str(uuid.uuid4())
        self.paused = paused
        self.started_at: datetime | None = None
        self.poll_interval = poll_interval
        self.running: dict[int, tuple[Job, asyncio.Task[None]]] = {}
        self._engine = engine
        self._executor = executor
        self._acks = AckBatch()
        self._wake = asyncio.Event()
        self._more = True  # jobs may be waiting: fetch when there is room
        self._stopping = False
        self._killed: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        # One round trip in flight at a time. Two would overlap Python and PostgreSQL,
        # but measured 15-25 % slower on a 2-core machine where a psycopg round trip is
        # costly: halving the batch cost more than the overlap gained (bench/README.md).
        self._cycle_task: asyncio.Task[None] | None = None
        self._wakes = 0  # counts wake-ups, so a fetch can tell if one came meanwhile
        self._cancel_all = False
        self._failures = 0
        # Sync jobs whose run ended (timeout, pkill, release) while their thread ran on,
        # by job id: the slot stays taken, and the job's ack is written, only once the
        # thread is free, so the job can never run again while its thread still runs.
        self._threads: dict[int, asyncio.Future[None]] = {}
        # Acks waiting for such a thread, by job id (written when it ends, or at once
        # when a node shutdown abandons the threads: the process is about to exit).
        self._deferred: dict[int, Callable[[], None]] = {}
        self._abandon = False
        # Producers of the same queue still draining after stop_queue: their jobs count
        # against this one's limit until they are done; they wake this one as they free.
        self._predecessors = list(predecessors or ())
        for old in self._predecessors:
            old.successor = self
        self.successor: Producer | None = None
        #: False once `stop` gave up on writing some final acks (those jobs stay
        #: executing, for the lifeline to rescue once this producer's heartbeat expires).
        self.clean = True
        # Jobs this producer finished, by outcome (see `counts`); plain completions are
        # counted apart, the cheapest way on the hot path.
        self._completed = 0
        self._outcomes: dict[str, int] = {}
        # Whether job events are being published: read once per cycle, not per job.
        self._watching = False
        # Jobs still running when a stop's grace period ended (for `queue.shutdown`).
        self._left_running = 0
        self._left_ids: list[int] = []
        # Publishes job starts and outcomes while someone subscribes (None: never).
        self._events = events

    # -- control -------------------------------------------------------------------------
    def start(self) -> None:
        """Begin fetching (call on the running loop)."""
        self.started_at = datetime.now(UTC).replace(tzinfo=None)
        self._wake.set()  # look for waiting jobs at once, not after the first poll interval
        self._task = asyncio.create_task(self._run(), name=f"kerrera-producer-{self.queue}")

    def wake(self) -> None:
        """Jobs may be available (an insert notification or a staged batch)."""
        self._more = True
        self._wakes += 1  # a fetch in flight must not forget this wake-up
        self._wake.set()

    def pause(self) -> None:
        """Stop fetching; running jobs go on."""
        self.paused = True

    def resume(self) -> None:
        """Fetch again."""
        self.paused = False
        self.wake()

    def scale(self, limit: int) -> None:
        """Change the limit; lowering it lets running jobs finish."""
        self.limit = limit
        self.wake()

    @property
    def stopping(self) -> bool:
        """True once `stop` was called."""
        return self._stopping

    def kill(self, job_id: int) -> bool:
        """Cancel a running job whose row was already marked cancelled. An async job's
        task is cancelled; a sync job cannot be interrupted, so its `job.cancelled()`
        turns true for it to check, and its result is ignored."""
        entry = self.running.get(job_id)
        if entry is None:
            return False
        self._killed.add(job_id)
        entry[0].cancel_requested = True
        entry[1].cancel()
        return True

    def check(self) -> dict[str, Any]:
        """This producer's state, for `check_queue`."""
        return {
            "queue": self.queue, "node": self.node, "uuid": self.uuid, "limit": self.limit,
            "running": len(self.running), "running_ids": sorted(self.running),
            "paused": self.paused, "started": self._task is not None and not self._stopping,
            "started_at": self.started_at, "counts": dict(self.counts),
        }  # fmt: skip

    async def stop(self, grace: float, *, abandon_threads: bool = False) -> int:
        """Stop fetching, give running jobs `grace` seconds, then cancel and release the
        rest (back to available, attempt not spent). Returns how many were released.

        A sync job's thread cannot be stopped: its job is released only once the thread
        ends, unless `abandon_threads` (the node is shutting down and its process exits,
        taking the daemon threads with it)."""
        self._stopping = True
        self._wake.set()
        task = self._task
        if task is None:
            return 0
        began = time.perf_counter()
        try:
            released = await self._stop(task, grace, abandon_threads)
        finally:
            if telemetry.active("queue.shutdown"):
                took = time.perf_counter() - began
                telemetry.execute(
                    "queue.shutdown",
                    {"running": self._left_running, "duration": took},
                    {"queue": self.queue, "node": self.node, "producer": self.uuid,
                     "job_ids": self._left_ids, "clean": self.clean},
                )  # fmt: skip
        return released

    async def _stop(self, task: asyncio.Task[None], grace: float, abandon_threads: bool) -> int:
        released = 0
        try:
            await asyncio.wait_for(asyncio.shield(task), grace)
        except TimeoutError:
            released = len(self.running)
            self._left_running = released
            self._left_ids = sorted(self.running)
            log.warning(
                "queue %s: %d job(s) still running after %.1fs; releasing them",
                self.queue,
                released,
                grace,
            )
            self.hurry(abandon_threads=abandon_threads)
            if not abandon_threads:
                # The node lives on (stop_queue): keep heartbeating and retrying until the
                # last acks are written and every sync thread of this queue has ended.
                await asyncio.shield(task)
                return released
            try:
                await asyncio.wait_for(asyncio.shield(task), 5.0)
            except TimeoutError:
                task.cancel()
                if self._cycle_task is not None:
                    self._cycle_task.cancel()
                self.clean = False
                log.error(
                    "queue %s: could not write %d final ack(s); the jobs stay "
                    "executing until rescued",
                    self.queue,
                    len(self._acks),
                )
        return released

    # -- loop ----------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            if not self._wake.is_set():
                try:
                    async with asyncio.timeout(self.poll_interval):
                        await self._wake.wait()
                except TimeoutError:
                    self._more = True  # the poll tick: look even without a notification
            self._wake.clear()
            if self._stopping and not (
                self.running or self._acks or self._cycle_task or self._deferred
            ):
                return
            if self._cycle_task is not None:
                continue  # the cycle in flight wakes us when it ends
            demand = self._demand()
            if demand == 0 and not self._acks:
                continue
            acks, self._acks = self._acks, AckBatch()
            self._cycle_task = asyncio.create_task(self._cycle(demand, acks))

    def _observe_cycle(self, began: float, demand: int, fetched: int, acked: int) -> None:
        took = time.perf_counter() - began
        where = {"queue": self.queue, "node": self.node, "producer": self.uuid}
        if demand:
            measurements = {"count": fetched, "demand": demand, "duration": took}
            telemetry.execute("producer.fetch", measurements, where)
        if acked:
            telemetry.execute("producer.ack", {"count": acked, "duration": took}, where)

    async def _ack_separately(self, acks: AckBatch) -> None:
        batches = [
            AckBatch(
                done_ids=acks.done_ids,
                done_attempts=acks.done_attempts,
                released_ids=acks.released_ids,
                released_attempts=acks.released_attempts,
            )
        ]
        batches += [AckBatch(other=[ack]) for ack in acks.other]
        for i, batch in enumerate(batches):
            try:
                await self._engine.ack_jobs(batch)
            except Exception as exc:
                if is_transient(exc):  # the connection went after all: retry them later
                    for rest in batches[i:]:
                        self._acks.extend(rest)
                    return
                self._acks.other.extend(unwritable(ack, exc) for ack in batch.other)
                if not batch.other:
                    log.error(
                        "queue %s: could not write %d ack(s): %s; the jobs stay "
                        "executing until rescued",
                        self.queue,
                        len(batch),
                        exc,
                    )

    def _held(self, carried: AckBatch) -> list[int]:
        """Jobs this producer knows: running, or finished with their ack not yet written
        (in this cycle or waiting for the next). Reclaiming any of them would run a
        finished job again."""
        held = set(self.running)
        for batch in (carried, self._acks):
            held.update(batch.done_ids)
            held.update(a["id"] for a in batch.other)
            held.update(batch.released_ids)
        return list(held)

    def _demand(self) -> int:
        if self.paused or self._stopping or not self._more:
            return 0
        busy = len(self.running) + len(self._threads)
        if self._predecessors:
            self._predecessors = [p for p in self._predecessors if p.busy]  # drained: forget
            busy += sum(p.busy for p in self._predecessors)
        return max(self.limit - busy, 0)

    @property
    def busy(self) -> int:
        """Slots taken on this node: running jobs and threads still finishing."""
        return len(self.running) + len(self._threads)

    def _freed(self) -> None:
        self._wake.set()
        if self.successor is not None:
            self.successor.wake()

    def _linger(self, job: Job, finished: asyncio.Future[None]) -> None:
        job_id: int = job.id  # type: ignore[assignment]
        self._threads[job_id] = finished

        def freed(fut: asyncio.Future[None]) -> None:
            if self._threads.get(job_id) is fut:
                del self._threads[job_id]
            self._freed()

        finished.add_done_callback(freed)

    def _after_thread(self, job: Job, write: Callable[[], None]) -> bool:
        """Write `job`'s ack when its thread is free: now, or when it finishes. Returns
        False if there is no lingering thread (the caller writes the ack itself)."""
        job_id: int = job.id  # type: ignore[assignment]
        thread = self._threads.get(job_id)
        if thread is None or thread.done() or self._abandon:
            return False
        self._deferred[job_id] = write

        def written(_fut: asyncio.Future[None]) -> None:
            pending = self._deferred.pop(job_id, None)
            if pending is not None:
                pending()
                self._wake.set()

        thread.add_done_callback(written)
        return True

    def hurry(self, *, abandon_threads: bool = True) -> None:
        """Cancel every running job now (they are put back to available), and jobs that
        a fetch in flight brings back. With `abandon_threads`, jobs whose sync thread
        runs on are put back at once too (the process is about to exit)."""
        self._cancel_all = True
        if abandon_threads:
            self._abandon = True
        for _job, job_task in list(self.running.values()):
            job_task.cancel()
        if abandon_threads:
            self._abandon_threads()

    def _abandon_threads(self) -> None:
        """Node shutdown: write the acks still waiting for threads now. The threads are
        daemons and end with the process."""
        self._abandon = True
        deferred, self._deferred = self._deferred, {}
        for write in deferred.values():
            write()
        self._wake.set()

    async def _cycle(self, demand: int, acks: AckBatch) -> None:
        """One round trip: write `acks`, claim up to `demand` jobs, start them."""
        jobs: list[Job] = []
        wakes = self._wakes
        try:
            if self._failures:
                reclaimed = await self._engine.reclaim_jobs(self.queue, self.uuid, self._held(acks))
                if reclaimed:
                    log.warning(
                        "queue %s: put back %d job(s) whose fetch reply was lost",
                        self.queue,
                        reclaimed,
                    )
            began = time.perf_counter() if telemetry.active("producer.fetch") else 0.0
            jobs = await self._engine.fetch_jobs(self.queue, demand, acks, self.node, self.uuid)
            self._failures = 0
            if began:
                self._observe_cycle(began, demand, len(jobs), len(acks))
            self._watching = self._events is not None and self._events.watched
            if acks.notes or (jobs and self._watching):
                # Before the jobs start, so a subscriber hears `started` before progress.
                await self._events.publish(self.queue, self.node, acks.notes, jobs)  # type: ignore[union-attr]
            if demand and self._wakes == wakes:  # no wake-up arrived meanwhile
                self._more = len(jobs) >= demand
        except Exception as exc:  # the database is away: keep the acks, back off
            if acks and not is_transient(exc):
                # Not a lost connection: perhaps one ack the database refuses. Write them
                # one by one so that it cannot hold back the others forever.
                await self._ack_separately(acks)
            else:
                self._acks.extend(acks)
            self._failures += 1
            delay = reconnect_backoff(self._failures)
            log.warning("queue %s: fetch failed (%s); retrying in %.2fs", self.queue, exc, delay)
            await asyncio.sleep(delay)
        finally:
            # Clear the slot here, not in a done callback: the loop that this wakes must
            # already see it free. Jobs are registered in the same synchronous step, so
            # the limit holds at every await point.
            self._cycle_task = None
            for job in jobs:
                if self._cancel_all:  # shutdown gave up waiting: put it straight back
                    # (no task: one cancelled before its first step would never run its
                    # clean-up, and the job would stay executing)
                    self._release(job)
                    continue
                job_task = asyncio.create_task(self._execute(job))
                self.running[job.id] = (job, job_task)  # type: ignore[index]
            self._wake.set()

    async def _execute(self, job: Job) -> None:
        try:
            ack = await self._executor.perform(job, self._linger)
        except asyncio.CancelledError:
            if job.id in self._killed:
                self._killed.discard(job.id)
                # Normally the row already says cancelled and this guarded ack is a no-op;
                # if it does not, the job still ends cancelled rather than stuck executing.
                end = cancelled(job, "cancelled while running")
                self._count("cancelled")
                self._note(job, "cancelled")
                if not self._after_thread(job, lambda: self._acks.other.append(end)):
                    self._acks.other.append(end)
            elif not self._after_thread(job, lambda: self._release(job)):
                self._release(job)
        else:
            if self._killed:
                self._killed.discard(job.id)  # (it ended before the kill)
            if self._threads and self._after_thread(job, lambda: self._record(job, ack)):
                pass  # a timed-out sync job: its retry waits for its thread
            elif ack is None and not self._watching:  # the hot path, inlined
                self._completed += 1
                self._acks.done_ids.append(job.id)  # type: ignore[arg-type]
                self._acks.done_attempts.append(job.attempt)
            else:
                self._record(job, ack)
        finally:
            entry = self.running.get(job.id)  # type: ignore[arg-type]
            if entry is not None and entry[1] is asyncio.current_task():
                # (a job fetched again while a stale run of it was still here has a new
                # entry, which this old run must leave alone)
                del self.running[job.id]  # type: ignore[arg-type]
            self._freed()

    @property
    def counts(self) -> dict[str, int]:
        """Jobs this producer finished, by outcome (completed, retryable, discarded,
        cancelled, snoozed, released), since it started: `kerrera top` derives
        throughput from these counters in the heartbeats."""
        counts = dict(self._outcomes)
        if self._completed:
            counts["completed"] = counts.get("completed", 0) + self._completed
        return counts

    def _count(self, outcome: str) -> None:
        self._outcomes[outcome] = self._outcomes.get(outcome, 0) + 1

    def _note(self, job: Job, state: str, error: str = "") -> None:
        if self._watching:
            self._acks.notes.append(job_entry(job.id, state, job.worker, job.attempt, error))  # type: ignore[arg-type]

    def _release(self, job: Job) -> None:
        self._count("released")
        self._note(job, "available")
        self._acks.released_ids.append(job.id)  # type: ignore[arg-type]
        self._acks.released_attempts.append(job.attempt)

    def _record(self, job: Job, ack: dict[str, Any] | None) -> None:
        if ack is None:
            self._completed += 1
            self._note(job, "completed")
            self._acks.done_ids.append(job.id)  # type: ignore[arg-type]
            self._acks.done_attempts.append(job.attempt)
        else:
            self._count(outcome_state(ack))
            self._note(job, ack["state"], ack.get("error", {}).get("error", ""))
            self._acks.other.append(ack)
