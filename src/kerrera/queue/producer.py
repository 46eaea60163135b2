"""One producer per queue per node: fetch up to the limit, dispatch, bundle the acks.

The loop sleeps until something happens (a notification, a job finishing, the poll
tick), then makes one round trip that both writes the acks of every job finished since
the last trip and claims as many new jobs as there are free slots. Under load a trip
carries tens of acks and fetches, so transactions per job stay far below one.

Every job the producer holds, from its fetch until its ack is written, has one entry in
a `Ledger` (see ledger.py): what may be reclaimed, released or counted against the limit
is derived from it, never from loose lists.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Protocol

from kerrera import telemetry
from kerrera.core.backoff import reconnect_backoff
from kerrera.core.job import Job, RunningJob
from kerrera.engine.base import AckBatch, Engine
from kerrera.engine.errors import is_transient
from kerrera.queue.chunks import Chunks
from kerrera.queue.executor import Executor, cancelled, unwritable
from kerrera.queue.ledger import RELEASE, Held, Ledger, Outcome, Phase
from kerrera.queue.observed import outcome_state

log = logging.getLogger("kerrera.producer")

#: The longest wait before a refused ack is tried again (seconds).
REFUSED_RETRY_CAP = 60.0


#: A job's end as the producer notes it for subscribers: (id, state, worker, attempt,
#: error text); the events layer turns it into its wire form.
JobNote = tuple[int, str, str, int, str]


class JobEvents(Protocol):
    """Where a producer publishes job events for subscribers."""

    @property
    def watched(self) -> bool:
        """Whether anyone subscribes now (otherwise nothing is published)."""

    async def publish(
        self, queue: str, node: str, done: list[JobNote], started: list[RunningJob]
    ) -> None:
        """Publish outcomes just written (`done`) and jobs just started; never raises."""


class Threads(enum.Enum):
    """What a stopping producer does about sync threads that outlive their jobs."""

    WAIT = "wait"  # the node lives on (stop_queue): wait for them, then write their acks
    LEAVE = "leave"  # the app stops in a process that lives on: leave their jobs executing
    ABANDON = "abandon"  # the process exits, and the threads with it: release their jobs


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
        #: Jobs whose body runs now, by id: (job, its task), for pkill and reports.
        self.running: dict[int, tuple[RunningJob, asyncio.Task[None]]] = {}
        #: Every job held, from fetch to written ack (see ledger.py).
        self.ledger = Ledger()
        self._engine = engine
        self._executor = executor
        self._notes: list[JobNote] = []  # job events to publish after the next ack
        self._wake = asyncio.Event()
        self._jobs_waiting = True  # jobs may be waiting: fetch when there is room
        self._stopping = False
        self._threads_at_stop = Threads.WAIT
        self._task: asyncio.Task[None] | None = None
        # One round trip in flight at a time. Two would overlap Python and PostgreSQL,
        # but measured 15-25 % slower on a 2-core machine where a psycopg round trip is
        # costly: halving the batch cost more than the overlap gained (bench/README.md).
        self._cycle_task: asyncio.Task[None] | None = None
        self._wakes = 0  # counts wake-ups, so a fetch can tell if one came meanwhile
        self._releasing = False  # shutdown gave up waiting: running jobs go back
        self._failures = 0  # consecutive failed cycles
        self.restarts = 0  #: times the loop died of an unexpected error and was restarted
        # Producers of the same queue still draining after stop_queue: their jobs count
        # against this one's limit until they are done; they wake this one as they free.
        self._predecessors = list(predecessors or ())
        for old in self._predecessors:
            old.successor = self
        self.successor: Producer | None = None
        #: False once `stop` left jobs executing (a final ack not written, or a thread
        #: still running): the producer's row then expires and the lifeline rescues them.
        self.clean = True
        # Jobs this producer finished, by outcome (see `counts`); plain completions are
        # counted apart, the cheapest way on the hot path.
        self._completed = 0
        self._outcomes: dict[str, int] = {}
        # Whether job events are being published: read once per cycle, not per job.
        self._watching = False
        # Jobs still running when a stop's grace period ended (for `queue.shutdown`).
        self._left_ids: list[int] = []
        # Publishes job starts and outcomes while someone subscribes (None: never).
        self._events = events
        # Chunk workers' jobs are collected into chunks there (see chunks.py); a chunk
        # takes one slot however many jobs it holds.
        self._chunks = Chunks(
            queue, ledger=self.ledger, executor=executor, running=self.running,
            end=self._end, freed=self._freed,
        )  # fmt: skip

    # -- control -------------------------------------------------------------------------
    def start(self) -> None:
        """Begin fetching (call on the running loop)."""
        self.started_at = datetime.now(UTC).replace(tzinfo=None)
        self._wake.set()  # look for waiting jobs at once, not after the first poll interval
        self._task = asyncio.create_task(self._supervise(), name=f"kerrera-producer-{self.queue}")

    def wake(self) -> None:
        """Jobs may be available (an insert notification or a staged batch)."""
        self._jobs_waiting = True
        self._chunks.wake()  # filling chunks look for more of their kind too
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
        if self._chunks.kill(job_id):  # a chunk job: its chunk runs on (see chunks.py)
            return True
        entry = self.running.get(job_id)
        if entry is None:
            return False
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

    async def stop(self, grace: float, *, threads: Threads = Threads.WAIT) -> int:
        """Stop fetching, give running jobs `grace` seconds, then cancel the rest and put
        them back to available (attempt not spent). Returns how many were cancelled.

        A sync job's thread cannot be stopped, and its job is put back only once the
        thread has ended: `threads` says whether to wait for such threads (WAIT, the node
        lives on), leave their jobs executing for the lifeline (LEAVE, the app stops in a
        process that lives on), or release them at once (ABANDON, the process exits and
        the daemon threads with it)."""
        self._stopping = True
        self._threads_at_stop = threads
        self._chunks.close()  # chunks still filling have not started: put them back
        self._wake.set()
        task = self._task
        if task is None:
            return 0
        began = time.perf_counter()
        try:
            return await self._stop(task, grace, threads)
        finally:
            if telemetry.active("queue.shutdown"):
                took = time.perf_counter() - began
                telemetry.execute(
                    "queue.shutdown",
                    {"running": len(self._left_ids), "duration": took},
                    {"queue": self.queue, "node": self.node, "producer": self.uuid,
                     "job_ids": self._left_ids, "clean": self.clean},
                )  # fmt: skip

    async def _stop(self, task: asyncio.Task[None], grace: float, threads: Threads) -> int:
        released = 0
        try:
            await asyncio.wait_for(asyncio.shield(task), grace)
        except TimeoutError:
            self._left_ids = sorted(self.running)
            released = len(self._left_ids)
            log.warning(
                "queue %s: %d job(s) still running after %.1fs; putting them back",
                self.queue,
                released,
                grace,
            )
            self.hurry(abandon_threads=threads is Threads.ABANDON)
            if threads is Threads.WAIT:
                # The node lives on (stop_queue): keep heartbeating and retrying until the
                # last acks are written and every sync thread of this queue has ended.
                await asyncio.shield(task)
                self._report_left_behind()
                return released
            try:
                await asyncio.wait_for(asyncio.shield(task), 5.0)
            except TimeoutError:
                task.cancel()
                if self._cycle_task is not None:
                    self._cycle_task.cancel()
                self.clean = False
                log.error(
                    "queue %s: could not write the final acks of job(s) %s; they stay "
                    "executing until the lifeline rescues them",
                    self.queue,
                    self.ledger.held_ids(),
                )
        self._report_left_behind()
        return released

    def _report_left_behind(self) -> None:
        """After the loop ended: say which jobs stay executing, and why."""
        left = self.ledger.held_ids()
        if not left:
            return
        self.clean = False
        lingering = self.ledger.in_phase(Phase.LINGERING)
        refused = self.ledger.in_phase(Phase.ACK_REFUSED)
        if lingering:
            log.warning(
                "queue %s: job(s) %s still run in threads that cannot be stopped; they "
                "stay executing, and the lifeline puts them back once this producer's "
                "heartbeat expires",
                self.queue,
                lingering,
            )
        if refused:
            log.error(
                "queue %s: the database still refuses the acks of job(s) %s; they stay "
                "executing until the lifeline rescues them (they ran: fix the cause, or "
                "complete them by hand, before then)",
                self.queue,
                refused,
            )

    def hurry(self, *, abandon_threads: bool = True) -> None:
        """Cancel every running job now (they are put back to available), and jobs that
        a fetch in flight brings back. With `abandon_threads`, jobs whose sync thread
        runs on are put back at once too (the process is about to exit)."""
        self._releasing = True
        self._chunks.close()  # (running chunks are in `running`, cancelled below)
        if abandon_threads:
            self._threads_at_stop = Threads.ABANDON
            self.ledger.abandon_threads()
        for _job, job_task in list(self.running.values()):
            job_task.cancel()
        self._wake.set()

    # -- loop ----------------------------------------------------------------------------
    async def _supervise(self) -> None:
        """Run the loop; if it dies of an unexpected error, log it and start it again
        (with backoff), keeping every job it holds."""
        while True:
            try:
                await self._loop()
                return
            except Exception as exc:
                self.restarts += 1
                delay = reconnect_backoff(self.restarts)
                log.exception(
                    "queue %s: the producer failed; restarting it in %.2fs", self.queue, delay
                )
                if telemetry.active("producer.restart"):
                    telemetry.execute(
                        "producer.restart",
                        {"restarts": self.restarts, "delay": delay},
                        {"queue": self.queue, "node": self.node, "producer": self.uuid,
                         "error": exc},
                    )  # fmt: skip
                await asyncio.sleep(delay)
                self._wake.set()

    async def _loop(self) -> None:
        while True:
            if not self._wake.is_set():
                try:
                    async with asyncio.timeout(self._sleep()):
                        await self._wake.wait()
                except TimeoutError:
                    self._jobs_waiting = True  # the poll tick: look without a notification
                    self._chunks.wake()
            self._wake.clear()
            if self._cycle_task is not None:
                continue  # the cycle in flight wakes us when it ends
            if self._stopping and self.ledger.settled(
                wait_threads=self._threads_at_stop is Threads.WAIT
            ):
                return
            demand = self._demand()
            due = self.ledger.due(time.monotonic())
            if demand == 0 and not self.ledger.has_ready and not due and not self._tops_up():
                continue
            acks, taken = self.ledger.take(self.uuid)
            notes, self._notes = self._notes, []
            self._cycle_task = asyncio.create_task(self._cycle(demand, acks, taken, due, notes))

    def _sleep(self) -> float:
        """How long the loop may sleep: the poll interval, or less if a refused ack is
        due sooner."""
        retry = self.ledger.next_retry()
        if retry is None:
            return self.poll_interval
        return max(0.0, min(self.poll_interval, retry - time.monotonic()))

    def _tops_up(self) -> bool:
        """Whether a filling chunk wants more of its kind on this round trip."""
        return self._chunks.hungry and not self.paused and not self._stopping

    def _demand(self) -> int:
        if self.paused or self._stopping or not self._jobs_waiting:
            return 0
        busy = self.busy
        if self._predecessors:
            self._predecessors = [p for p in self._predecessors if p.busy]  # drained: forget
            busy += sum(p.busy for p in self._predecessors)
        return max(self.limit - busy, 0)

    @property
    def busy(self) -> int:
        """Slots taken on this node: running jobs and threads still finishing (a chunk
        takes one slot: its other jobs, `extra`, are held but take none)."""
        return self.ledger.busy - self._chunks.extra

    def _freed(self) -> None:
        self._wake.set()
        if self.successor is not None:
            self.successor.wake()

    def _observe_cycle(self, began: float, demand: int, fetched: int, acked: int) -> None:
        took = time.perf_counter() - began
        where = {"queue": self.queue, "node": self.node, "producer": self.uuid}
        if demand:
            measurements = {"count": fetched, "demand": demand, "duration": took}
            telemetry.execute("producer.fetch", measurements, where)
        if acked:
            telemetry.execute("producer.ack", {"count": acked, "duration": took}, where)

    async def _cycle(
        self, demand: int, acks: AckBatch, taken: list[Held], due: list[Held],
        notes: list[JobNote],
    ) -> None:  # fmt: skip
        """One round trip: write `acks` (the outcomes of `taken`), claim up to `demand`
        jobs, start them, and publish `notes` for subscribers once the acks are written.
        Refused acks that are `due` are tried again first, each alone."""
        jobs: list[RunningJob] = []
        wakes = self._wakes
        try:
            for entry in due:
                await self._retry_refused(entry)
            if self._failures:
                # A fetch whose reply was lost may have claimed jobs we never received:
                # put back what this producer claimed and does not hold.
                held = self.ledger.held_ids()
                reclaimed = await self._engine.reclaim_jobs(self.queue, self.uuid, held)
                if reclaimed:
                    log.warning(
                        "queue %s: put back %d job(s) whose fetch reply was lost",
                        self.queue,
                        reclaimed,
                    )
            began = time.perf_counter() if telemetry.active("producer.fetch") else 0.0
            if demand or acks or not self._tops_up():  # (a trip only for a chunk skips it)
                jobs = await self._engine.fetch_jobs(self.queue, demand, acks, self.node, self.uuid)
            self.ledger.written(taken)
            self._failures = 0
            if began:
                self._observe_cycle(began, demand, len(jobs), len(taken))
            self._watching = self._events is not None and self._events.watched
            if notes or (jobs and self._watching):
                # Before the jobs start, so a subscriber hears `started` before progress.
                await self._events.publish(self.queue, self.node, notes, jobs)  # type: ignore[union-attr]
            if self._tops_up():  # filling chunks claim more of their kind (chunks.py)
                await self._top_up_chunks()
            if demand and self._wakes == wakes:  # no wake-up arrived meanwhile
                self._jobs_waiting = len(jobs) >= demand
        except Exception as exc:  # the database is away, or refuses an ack
            self._notes[:0] = notes
            if taken and not is_transient(exc):
                # Not a lost connection: perhaps one ack the database refuses. Write them
                # one by one, so that it cannot hold back the others.
                await self._ack_separately(taken)
            else:
                self.ledger.put_back(taken)
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
                self._dispatch(job)
            self._wake.set()

    async def _top_up_chunks(self) -> None:
        topped = await self._chunks.top_up(self._engine, self.node, self.uuid)
        if topped is None:
            self._failures = 1  # a lost reply may have claimed jobs: reclaim next trip
        elif topped and self._watching:
            await self._events.publish(self.queue, self.node, [], topped)  # type: ignore[union-attr]

    def _dispatch(self, job: RunningJob) -> None:
        entry = self.ledger.start(job.id, job.attempt)
        if self._releasing:  # shutdown gave up waiting: put it straight back
            # (no task: one cancelled before its first step would never run its
            # clean-up, and the job would stay executing)
            self._end(job, entry, RELEASE)
            return
        if self._chunks.accept(job, entry):  # a chunk worker's job joins a chunk
            return
        job_task = asyncio.create_task(self._execute(job, entry))
        self.running[job.id] = (job, job_task)

    # -- acks the database refuses --------------------------------------------------------
    async def _ack_separately(self, taken: list[Held]) -> None:
        for i, entry in enumerate(taken):
            try:
                await self._engine.ack_jobs(self.ledger.take_one(entry, self.uuid))
            except Exception as exc:
                if is_transient(exc):  # the connection went after all: retry them later
                    self.ledger.put_back(taken[i:])
                    return
                self._refused(entry, exc)
            else:
                self.ledger.written([entry])

    async def _retry_refused(self, entry: Held) -> None:
        try:
            await self._engine.ack_jobs(self.ledger.take_one(entry, self.uuid))
        except Exception as exc:
            if is_transient(exc):
                delay = reconnect_backoff(self._failures + 1)
                self.ledger.refuse(entry, time.monotonic() + delay, counted=False)
                raise  # the cycle backs off and reconnects
            self._refused(entry, exc)
        else:
            self.ledger.written([entry])
            if not entry.refusals:
                return
            log.warning(
                "queue %s: the ack of job %s was written after %d refusal(s)",
                self.queue,
                entry.job_id,
                entry.refusals,
            )

    def _refused(self, entry: Held, exc: BaseException) -> None:
        """The database refused this ack (not a lost connection). A detailed outcome is
        first replaced by a plain one that records why (its delay or meta may be what
        the database rejects); anything refused after that stays held, executing, and is
        tried again alone with growing delays: never reclaimed, never run again."""
        outcome = entry.outcome
        if isinstance(outcome, dict) and not outcome.get("unwritable"):
            self.ledger.replace(entry, unwritable(outcome, exc))
            self.ledger.refuse(entry, time.monotonic(), counted=False)  # due at once, alone
            return
        delay = min(REFUSED_RETRY_CAP, 0.5 * 2.0 ** min(entry.refusals, 10))
        self.ledger.refuse(entry, time.monotonic() + delay)
        log.error(
            "queue %s: the database refused the ack of job %s (attempt %d): %s; the job "
            "stays executing, held by this producer (it will not run again), and its ack "
            "is tried again alone in %.1fs",
            self.queue,
            entry.job_id,
            entry.attempt,
            exc,
            delay,
        )

    # -- one job --------------------------------------------------------------------------
    async def _execute(self, job: RunningJob, entry: Held) -> None:
        outcome: Outcome = RELEASE
        try:
            outcome = (await self._executor.execute(job, self._linger_for(entry)))[0]
        except asyncio.CancelledError:
            if job.cancel_requested:  # pkill: the row already says cancelled
                # Normally this guarded ack is a no-op; if the row does not say cancelled,
                # the job still ends cancelled rather than stuck executing.
                outcome = cancelled(job, "cancelled while running")
        finally:
            current = self.running.get(job.id)
            if current is not None and current[1] is asyncio.current_task():
                # (a job fetched again while a stale run of it was still here has a new
                # entry, which this old run must leave alone)
                del self.running[job.id]
            self._end(job, entry, outcome)
            self._freed()

    def _linger_for(self, entry: Held) -> Any:
        def linger(_job: Job, finished: asyncio.Future[None]) -> None:
            # The job's thread outlives its run (a timeout or a pkill): its slot stays
            # taken, and its ack waits, until the thread is free.
            self.ledger.linger(entry)

            def freed(_fut: asyncio.Future[None]) -> None:
                self.ledger.thread_done(entry)
                self._freed()

            finished.add_done_callback(freed)

        return linger

    def _end(self, job: RunningJob, entry: Held, outcome: Outcome) -> None:
        if outcome is None:
            self._completed += 1
            if self._watching:
                self._note(job, "completed")
        elif isinstance(outcome, dict):
            self._count(outcome_state(outcome))
            self._note(job, outcome["state"], outcome.get("error", {}).get("error", ""))
        else:
            self._count("released")
            self._note(job, "available")
        self.ledger.end(entry, outcome)

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

    def _note(self, job: RunningJob, state: str, error: str = "") -> None:
        if self._watching:
            self._notes.append((job.id, state, job.worker, job.attempt, error))
