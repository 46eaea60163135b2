"""One producer per queue per node: fetch up to the limit, dispatch, bundle the acks.

The loop sleeps until something happens (a notification, a job finishing, the poll
tick), then makes one round trip that both writes the acks of every job finished since
the last trip and claims as many new jobs as there are free slots. Under load a trip
carries tens of acks and fetches, so transactions per job stay far below one.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from kerrera._backoff import reconnect_backoff
from kerrera._job import Job
from kerrera.engine.base import AckBatch, Engine
from kerrera.engine.errors import is_transient
from kerrera.queue.executor import Executor, cancelled, unwritable

log = logging.getLogger("kerrera.producer")


class Producer:
    """Runs the jobs of one queue on this node, never more than `limit` at once."""

    def __init__(
        self, queue: str, limit: int, *, engine: Engine, executor: Executor, node: str,
        poll_interval: float = 1.0, paused: bool = False,
        predecessor: Producer | None = None,
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
        # Threads of sync jobs that ended (timeout, pkill) while their thread ran on: the
        # slot stays taken until the thread is free.
        self._lingering: set[asyncio.Future[None]] = set()
        # A producer of the same queue still draining after stop_queue: its running jobs
        # count against this one's limit until it is done.
        self._predecessor = predecessor

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
            "started_at": self.started_at,
        }  # fmt: skip

    async def stop(self, grace: float) -> int:
        """Stop fetching, give running jobs `grace` seconds, then cancel and release the
        rest (back to available, attempt not spent). Returns how many were released."""
        self._stopping = True
        self._wake.set()
        task = self._task
        if task is None:
            return 0
        released = 0
        try:
            await asyncio.wait_for(asyncio.shield(task), grace)
        except TimeoutError:
            released = len(self.running)
            log.warning(
                "queue %s: %d job(s) still running after %.1fs; releasing them",
                self.queue,
                released,
                grace,
            )
            self._cancel_all = True  # and jobs a fetch still in flight brings back
            for _job, job_task in list(self.running.values()):
                job_task.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(task), 5.0)
            except TimeoutError:
                task.cancel()
                if self._cycle_task is not None:
                    self._cycle_task.cancel()
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
            if self._stopping and not (self.running or self._acks or self._cycle_task):
                return
            if self._cycle_task is not None:
                continue  # the cycle in flight wakes us when it ends
            demand = self._demand()
            if demand == 0 and not self._acks:
                continue
            acks, self._acks = self._acks, AckBatch()
            self._cycle_task = asyncio.create_task(self._cycle(demand, acks))

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
        busy = len(self.running) + len(self._lingering)
        if self._predecessor is not None:
            if self._predecessor.busy:
                busy += self._predecessor.busy
            else:
                self._predecessor = None  # drained: forget it
        return max(self.limit - busy, 0)

    @property
    def busy(self) -> int:
        """Slots taken on this node: running jobs and threads still finishing."""
        return len(self.running) + len(self._lingering)

    def _linger(self, finished: asyncio.Future[None]) -> None:
        self._lingering.add(finished)

        def freed(fut: asyncio.Future[None]) -> None:
            self._lingering.discard(fut)
            self._wake.set()

        finished.add_done_callback(freed)

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
            jobs = await self._engine.fetch_jobs(self.queue, demand, acks, self.node, self.uuid)
            self._failures = 0
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
                job_task = asyncio.create_task(self._execute(job))
                self.running[job.id] = (job, job_task)  # type: ignore[index]
                if self._cancel_all:  # shutdown gave up waiting: put it straight back
                    job_task.cancel()
            self._wake.set()

    async def _execute(self, job: Job) -> None:
        try:
            ack = await self._executor.perform(job, self._linger)
        except asyncio.CancelledError:
            if job.id in self._killed:
                self._killed.discard(job.id)
                # Normally the row already says cancelled and this guarded ack is a no-op;
                # if it does not, the job still ends cancelled rather than stuck executing.
                self._acks.other.append(cancelled(job, "cancelled while running"))
            else:
                self._acks.released_ids.append(job.id)  # type: ignore[arg-type]
                self._acks.released_attempts.append(job.attempt)
        else:
            if ack is None:
                self._acks.done_ids.append(job.id)  # type: ignore[arg-type]
                self._acks.done_attempts.append(job.attempt)
            else:
                self._acks.other.append(ack)
        finally:
            entry = self.running.get(job.id)  # type: ignore[arg-type]
            if entry is not None and entry[1] is asyncio.current_task():
                # (a job fetched again while a stale run of it was still here has a new
                # entry, which this old run must leave alone)
                del self.running[job.id]  # type: ignore[arg-type]
            self._wake.set()
