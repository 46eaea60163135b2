"""Chunk workers on a node: collecting a chunk's jobs, then running them in one call.

How a chunk gets many jobs under its queue's concurrency limit (as Oban Pro does it):
a chunk takes one slot however many jobs it holds. The producer's ordinary fetch claims
jobs in queue order; a job of a chunk worker joins the chunk that is filling for its
worker and partition on this producer, or opens one (the one slot). A filling chunk then
asks for more of its own kind: on the producer's next round trip, `fetch_chunk` claims up
to the room left of that worker and partition in one statement, marked executing under
this producer like any fetch, so the ledger, the owner guard on acks, the reclaim after
a lost reply and the lifeline all cover chunk jobs exactly as they cover other jobs. It
asks again whenever the producer hears of new jobs (an insert notification, a poll
tick). It runs when it is full, or `timeout` seconds after it opened, with what it has.

Every job of a chunk has its own ledger entry from its claim to its written ack, and is
acked on its own, with its own outcome, in the producer's ack bundles. Slots are counted
as the ledger's busy jobs minus `extra` (every job of an open chunk but one).

A stopping producer puts back the jobs of chunks still filling at once (they have not
started), and gives running chunks the grace period; a chunk still running after it is
cancelled and all its jobs put back, attempt not spent. `pkill` of one job of a running
chunk cannot interrupt the others: its `job.cancelled()` turns true and it ends cancelled
whatever the chunk returns.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kerrera import telemetry
from kerrera.core.chunk import ChunkResult, ChunkWorker, chunk_worker_of
from kerrera.core.errors import JobTimeoutError
from kerrera.core.job import RunningJob
from kerrera.core.outcomes import CancelJob, SnoozeJob
from kerrera.engine.base import Engine
from kerrera.queue.executor import (
    Executor,
    cancelled,
    chunk_outcome,
    failure,
    outcome,
    snoozed,
)
from kerrera.queue.ledger import RELEASE, Held, Ledger, Outcome
from kerrera.queue.observed import (
    failure_metadata,
    flush_progress,
    job_metadata,
    outcome_state,
    queue_time,
)
from kerrera.telemetry import bus

log = logging.getLogger("kerrera.chunks")

#: The producer's way to end one held job with an outcome (counted, noted, acked).
EndJob = Callable[[RunningJob, Held, Outcome], None]


class _State(enum.Enum):
    FILLING = "filling"
    RUNNING = "running"
    CLOSED = "closed"


@dataclass(eq=False)
class Chunk:
    """One chunk of a producer: jobs of one worker and partition, run in one call."""

    worker: ChunkWorker
    key: str  # the partition's hashable form
    partition: list[Any]  # the values of the worker's `by` keys
    opened: float  # monotonic seconds
    members: list[tuple[RunningJob, Held]] = field(default_factory=list)
    state: _State = _State.FILLING
    hungry: bool = True  # more of its kind may be waiting: ask on the next round trip
    topping: bool = False  # a `fetch_chunk` for it is in flight: it may not start yet
    due: bool = False  # its timeout passed
    timer: asyncio.TimerHandle | None = None


class Chunks:
    """The chunks of one producer: filling, then running."""

    def __init__(
        self, queue: str, *, ledger: Ledger, executor: Executor,
        running: dict[int, tuple[RunningJob, asyncio.Task[None]]], end: EndJob,
        freed: Callable[[], None],
    ) -> None:  # fmt: skip
        self.queue = queue
        #: Jobs of open chunks beyond the first of each: held, but taking no slot.
        self.extra = 0
        self._ledger = ledger
        self._executor = executor
        self._running = running  # the producer's: running chunk jobs appear there too
        self._end = end
        self._freed = freed
        self._filling: dict[tuple[str, str], Chunk] = {}
        self._open: set[Chunk] = set()
        self._closed = False  # the producer stops: chunk jobs go straight back

    # -- the producer's round trip ---------------------------------------------------------
    @property
    def hungry(self) -> bool:
        """Whether a filling chunk wants a `fetch_chunk` on the next round trip."""
        return bool(self._filling) and any(
            c.hungry and not c.topping for c in self._filling.values()
        )

    def wake(self) -> None:
        """New jobs may be waiting: filling chunks ask again."""
        for chunk in self._filling.values():
            chunk.hungry = True

    async def top_up(self, engine: Engine, node: str, producer: str) -> list[RunningJob] | None:
        """Claim more jobs for every hungry filling chunk, one statement each; return
        them. None if a statement failed: its reply may be lost with jobs claimed, so the
        producer must reclaim what it does not hold on its next round trip."""
        claimed: list[RunningJob] = []
        for chunk in [c for c in self._filling.values() if c.hungry and not c.topping]:
            if chunk.state is not _State.FILLING:  # it started or closed meanwhile
                continue
            options = chunk.worker.chunk
            room = options.size - len(chunk.members)
            chunk.hungry = False  # until the next wake: the partition may be drained
            chunk.topping = True
            try:
                jobs = await engine.fetch_chunk(
                    self.queue, chunk.worker.name, options.by, chunk.partition, room,
                    node, producer,
                )  # fmt: skip
            except Exception as exc:
                chunk.topping = False
                self._start_if_due(chunk)
                log.warning("queue %s: could not fetch jobs for a chunk (%s)", self.queue, exc)
                return None
            chunk.topping = False
            claimed += jobs
            # (no await between the reply and here: every job claimed is held at once)
            for job in jobs:
                self._join(chunk, job, self._ledger.start(job.id, job.attempt))
            if chunk.state is _State.FILLING and len(chunk.members) >= options.size:
                self._start(chunk)
            self._start_if_due(chunk)
        return claimed

    def accept(self, job: RunningJob, entry: Held) -> bool:
        """Take a fetched job (already held) if its worker is a chunk worker: it joins
        the filling chunk of its partition, or opens one. False: not a chunk job."""
        worker = chunk_worker_of(job.worker)
        if worker is None:
            return False
        if self._closed:
            self._end(job, entry, RELEASE)
            return True
        options = worker.chunk
        key = options.partition_key(job.args) if options.by else ""
        chunk = self._filling.get((worker.name, key))
        if chunk is None:
            chunk = Chunk(worker, key, options.partition(job.args), time.monotonic())
            self._filling[worker.name, key] = chunk
            self._open.add(chunk)
            chunk.timer = asyncio.get_running_loop().call_later(
                options.timeout, self._timed_out, chunk
            )
            chunk.members.append((job, entry))  # the chunk's one slot
        else:
            self._join(chunk, job, entry)
        if len(chunk.members) >= options.size:
            self._start(chunk)
        return True

    def _join(self, chunk: Chunk, job: RunningJob, entry: Held) -> None:
        if chunk.state is not _State.FILLING or self._closed:  # it started, or we stop
            self._end(job, entry, RELEASE)
            self._freed()
            return
        chunk.members.append((job, entry))
        self.extra += 1

    # -- control ---------------------------------------------------------------------------
    def kill(self, job_id: int) -> bool:
        """`pkill` of a chunk job (its row already says cancelled). One waiting in a
        filling chunk leaves it and ends now; one in a running chunk cannot be stopped
        alone: `job.cancelled()` turns true, and it ends cancelled. False: not ours."""
        for chunk in self._open:
            for i, (job, entry) in enumerate(chunk.members):
                if job.id != job_id:
                    continue
                job.cancel_requested = True
                if chunk.state is _State.FILLING:
                    del chunk.members[i]
                    if chunk.members:
                        self.extra -= 1
                    else:
                        self._close(chunk)
                    self._end(job, entry, cancelled(job, "cancelled before its chunk ran"))
                    self._freed()
                return True
        return False

    def close(self) -> None:
        """The producer stops: put back the jobs of filling chunks now (they have not
        started), and any chunk job that still arrives. Running chunks go on."""
        self._closed = True
        released = False
        for chunk in list(self._filling.values()):
            members = chunk.members
            self.extra -= max(len(members) - 1, 0)
            self._close(chunk)
            for job, entry in members:
                self._end(job, entry, RELEASE)
            released = True
        if released:
            self._freed()

    def _close(self, chunk: Chunk) -> None:
        chunk.state = _State.CLOSED
        if chunk.timer is not None:
            chunk.timer.cancel()
        self._filling.pop((chunk.worker.name, chunk.key), None)
        self._open.discard(chunk)

    # -- running ---------------------------------------------------------------------------
    def _timed_out(self, chunk: Chunk) -> None:
        chunk.due = True
        self._start_if_due(chunk)

    def _start_if_due(self, chunk: Chunk) -> None:
        # (a chunk whose fetch is in flight starts when it returns: jobs arriving for a
        # chunk already running would need a slot of their own)
        if chunk.due and chunk.state is _State.FILLING and not chunk.topping:
            self._start(chunk)

    def _start(self, chunk: Chunk) -> None:
        if chunk.timer is not None:
            chunk.timer.cancel()
        self._filling.pop((chunk.worker.name, chunk.key), None)
        chunk.state = _State.RUNNING
        name = f"kerrera-chunk-{self.queue}-{chunk.members[0][0].id}"
        task = asyncio.create_task(self._run(chunk), name=name)
        for job, _entry in chunk.members:
            self._running[job.id] = (job, task)

    async def _run(self, chunk: Chunk) -> None:
        jobs = [job for job, _entry in chunk.members]
        outcomes: list[Outcome] = [RELEASE] * len(jobs)
        try:
            wait = time.monotonic() - chunk.opened
            outcomes[:] = await run_chunk(self._executor, chunk.worker, jobs, wait)
        except asyncio.CancelledError:
            pass  # shutdown gave up waiting: put back (pkilled jobs: cancelled, below)
        finally:
            self._finish(chunk, outcomes)

    def _finish(self, chunk: Chunk, outcomes: list[Outcome]) -> None:
        task = asyncio.current_task()
        for (job, entry), end in zip(chunk.members, outcomes, strict=True):
            if job.cancel_requested:  # pkill: the row already says cancelled
                end = cancelled(job, "cancelled while running")
            current = self._running.get(job.id)
            if current is not None and current[1] is task:
                del self._running[job.id]
            self._end(job, entry, end)
        self.extra -= len(chunk.members) - 1
        chunk.state = _State.CLOSED
        self._open.discard(chunk)
        self._freed()


async def run_chunk(
    executor: Executor, worker: ChunkWorker, jobs: list[RunningJob], wait: float = 0.0
) -> list[dict[str, Any] | None]:
    """Run `jobs` in one call of `worker.process` and return each job's ack (None:
    completed), emitting `chunk.start` / `chunk.stop` and each job's events as a single
    job emits them. Only a cancellation by the producer propagates."""
    node = executor.node or ""
    watched = executor.node is not None and bus.jobs_watched
    where = {"worker": worker.name, "queue": jobs[0].queue, "node": node,
             "job_ids": [job.id for job in jobs]}  # fmt: skip
    if telemetry.active("chunk.start"):
        measured = {"system_time": time.time(), "size": len(jobs), "wait": wait}
        telemetry.execute("chunk.start", measured, dict(where))
    if watched:
        for job in jobs:
            measured = {"system_time": time.time(), "queue_time": queue_time(job)}
            telemetry.execute("job.start", measured, job_metadata(job, node))
    began = time.perf_counter()
    try:
        acks, errors = await _call(worker, jobs)
        for job in jobs:
            if job.progress_state is not None:
                await flush_progress(job)
    except asyncio.CancelledError:
        if watched:
            _observe_jobs(jobs, None, None, node, time.perf_counter() - began)
        raise
    took = time.perf_counter() - began
    if watched:
        _observe_jobs(jobs, acks, errors, node, took)
    if telemetry.active("chunk.stop"):
        states: dict[str, int] = {}
        for ack in acks:
            states[outcome_state(ack)] = states.get(outcome_state(ack), 0) + 1
        measured = {"duration": took, "size": len(jobs), "wait": wait}
        telemetry.execute("chunk.stop", measured, {**where, "states": states})
    return acks


async def _call(
    worker: ChunkWorker, jobs: list[RunningJob]
) -> tuple[list[dict[str, Any] | None], list[BaseException | None]]:
    """Call `process` once and map what it did to one ack per job."""
    count = len(jobs)
    try:
        limit = worker.timeout(jobs[0])
        if limit is None:
            result = await worker.process(list(jobs))
        else:
            try:
                async with asyncio.timeout(limit):
                    result = await worker.process(list(jobs))
            except TimeoutError:
                raise JobTimeoutError(
                    f"a chunk of {count} job(s) exceeded its run_timeout of {limit}s"
                ) from None
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # the producer cancelled it
        return _fail_all(worker, jobs, exc)  # the worker's own code raised it
    except CancelJob as exc:
        return [cancelled(job, exc.reason) for job in jobs], [None] * count
    except SnoozeJob as snooze:
        try:
            return [snoozed(job, snooze.seconds) for job in jobs], [None] * count
        except Exception as bad:
            return _fail_all(worker, jobs, bad)
    except BaseException as exc:  # a worker's failure must never reach the node
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            log.warning("a chunk of %s raised %r; recorded as an error", worker.name, exc)
        return _fail_all(worker, jobs, exc)
    return _map(worker, jobs, result)


def _map(
    worker: ChunkWorker, jobs: list[RunningJob], result: Any
) -> tuple[list[dict[str, Any] | None], list[BaseException | None]]:
    if not isinstance(result, ChunkResult):  # None, a value, Snooze, Cancel, Record: all
        return [outcome(job, worker, result) for job in jobs], [None] * len(jobs)
    try:
        result.check(job.id for job in jobs)
    except ValueError as exc:  # an invalid return value fails the chunk
        return _fail_all(worker, jobs, exc, with_traceback=False)
    errors: list[BaseException | None] = []
    for job in jobs:
        error = result.failed.get(job.id)
        errors.append(error if isinstance(error, BaseException) else None)
    return [chunk_outcome(job, worker, result) for job in jobs], errors


def _fail_all(
    worker: ChunkWorker, jobs: list[RunningJob], exc: BaseException, *, with_traceback: bool = True
) -> tuple[list[dict[str, Any] | None], list[BaseException | None]]:
    acks: list[dict[str, Any] | None] = [
        failure(job, worker, exc, with_traceback=with_traceback) for job in jobs
    ]
    return acks, [exc] * len(jobs)


def _observe_jobs(
    jobs: list[RunningJob], acks: list[dict[str, Any] | None] | None,
    errors: list[BaseException | None] | None, node: str, took: float,
) -> None:  # fmt: skip
    """Each job's `job.exception` (if it failed) and `job.stop`, as a single job's run
    emits them; `acks` None: the chunk was interrupted (released, or cancelled)."""
    for i, job in enumerate(jobs):
        meta = job_metadata(job, node)
        measured = {"duration": took, "queue_time": queue_time(job)}
        if acks is None or errors is None:
            state = "cancelled" if job.cancel_requested else "released"
            telemetry.execute("job.stop", measured, {**meta, "state": state, "result": None})
            continue
        ack = acks[i]
        state = outcome_state(ack)
        if state in ("retryable", "discarded"):
            failed = failure_metadata(ack, errors[i])
            telemetry.execute("job.exception", dict(measured), {**meta, **failed})
        result = ack["meta"].get("return") if ack is not None and "meta" in ack else None
        telemetry.execute("job.stop", measured, {**meta, "state": state, "result": result})
