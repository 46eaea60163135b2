"""Running one job and turning what it did into an ack.

`execute` returns None as the ack of a plain completion (the hot path: no allocation beyond the
job itself) or a small dict describing any other outcome, in the shape the engine's
`ack_and_fetch` statement reads. Cancellation (shutdown or pkill) propagates as
`asyncio.CancelledError` for the producer to handle.
"""

from __future__ import annotations

import asyncio
import logging
import math
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kerrera.core import codec
from kerrera.core.backoff import default_backoff
from kerrera.core.chunk import ChunkResult, ChunkWorker
from kerrera.core.errors import JobTimeoutError, UnknownWorkerError
from kerrera.core.job import Job
from kerrera.core.outcomes import Cancel, CancelJob, Record, Snooze, SnoozeJob
from kerrera.core.worker import Worker, load_worker, loaded_worker
from kerrera.queue.observed import flush_progress, observed
from kerrera.queue.threads import DaemonThreadPool
from kerrera.telemetry import bus

log = logging.getLogger("kerrera.executor")

#: The longest retry or snooze delay written (about 31 years): past it an interval
#: overflows, and an ack that cannot be written would hold back every ack bundled with it.
MAX_DELAY = 1e9


class Executor:
    """Runs jobs for the producers of one node; sync workers go to `threads`."""

    def __init__(self, threads: DaemonThreadPool, node: str | None = None) -> None:
        self.threads = threads
        #: The node's name, for telemetry (None: emit no job events).
        self.node = node

    async def execute(
        self, job: Job, linger: Callable[[Job, asyncio.Future[None]], None] | None = None
    ) -> tuple[dict[str, Any] | None, BaseException | None]:
        """Run `job` to its end: its ack (None means plainly completed) and the
        exception that failed it, if any (the testing helpers may re-raise it).

        Whatever happens, a job ends with an ack: only a cancellation that its producer
        asked for (shutdown, pkill) propagates, as `asyncio.CancelledError`. A sync job
        whose thread outlives it (a timeout, a pkill) is handed to `linger` as a future
        that resolves when the thread is free, so its producer can keep the slot taken.
        Progress the job reported but has not written yet is written before it returns.
        Job events are emitted while a handler listens."""
        if self.node is not None and bus.jobs_watched:
            return await observed(self, job, linger)
        result = await self.run(job, linger)
        if job.progress_state is not None:
            await flush_progress(job)
        return result

    async def run(
        self, job: Job, linger: Callable[[Job, asyncio.Future[None]], None] | None = None
    ) -> tuple[dict[str, Any] | None, BaseException | None]:
        """`execute` without telemetry: the ack, and the exception that failed the job."""
        try:
            worker = loaded_worker(job.worker) or await load_worker(job.worker)
        except Exception as exc:  # unknown name, or a worker class that cannot be built
            trace = not isinstance(exc, UnknownWorkerError)
            return failure(job, None, exc, with_traceback=trace), exc
        try:
            result = await self._call(worker, job, linger)
            return (None, None) if result is None else (outcome(job, worker, result), None)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the producer cancelled it
            return failure(job, worker, exc), exc  # the worker's own code raised it
        except CancelJob as exc:
            return cancelled(job, exc.reason), None
        except SnoozeJob as snooze:
            try:
                return snoozed(job, snooze.seconds), None
            except Exception as bad:  # a bad snooze value: an error on the job
                return failure(job, worker, bad), bad
        except BaseException as exc:  # a worker's failure must never reach the node
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                log.warning("job %s raised %r; recorded as an error", job.id, exc)
            return failure(job, worker, exc), exc

    async def _call(
        self, worker: Worker, job: Job,
        linger: Callable[[Job, asyncio.Future[None]], None] | None = None,
    ) -> Any:  # fmt: skip
        limit = worker.timeout(job)
        if worker.is_async:
            # A chunk worker run here, alone (inline mode, perform_job), gets a chunk of
            # one; on a node its jobs go through queue/chunks.py instead.
            arg: Any = [job] if isinstance(worker, ChunkWorker) else job
            if limit is None:
                return await worker.process(arg)  # type: ignore[misc]
            try:
                async with asyncio.timeout(limit):
                    return await worker.process(arg)  # type: ignore[misc]
            except TimeoutError:
                raise JobTimeoutError(f"job {job.id} exceeded its timeout of {limit}s") from None
        started, future, finished = self.threads.run(worker.process, job)
        try:
            await started
        except asyncio.CancelledError:
            future.cancel()  # not started yet: the thread skips it
            raise
        try:
            if limit is None:
                return await future
            try:
                # A thread cannot be interrupted: past the limit the job fails and its
                # thread is left to finish on its own (its result is then ignored).
                return await asyncio.wait_for(future, limit)
            except TimeoutError:
                raise JobTimeoutError(f"job {job.id} exceeded its timeout of {limit}s") from None
        finally:
            if not finished.done() and linger is not None:
                linger(job, finished)


def outcome(job: Job, worker: Worker, result: Any) -> dict[str, Any] | None:
    """Map a worker's return value to an ack."""
    if isinstance(result, ChunkResult):  # a chunk worker's, run as a chunk of one
        try:
            result.check([job.id])  # type: ignore[list-item]
        except ValueError as exc:  # it names other jobs: an invalid return value
            return failure(job, worker, exc, with_traceback=False)
        return chunk_outcome(job, worker, result)
    if isinstance(result, Snooze):
        return snoozed(job, result.seconds)
    if isinstance(result, Cancel):
        return cancelled(job, result.reason)
    if isinstance(result, Record):
        try:
            text = codec.dumps(result.value)
        except TypeError as exc:
            error = TypeError(f"Record value is not JSON-serialisable: {exc}")
            return failure(job, worker, error, with_traceback=False)
        if "\\u0000" in text:  # jsonb cannot store NUL characters
            nul = ValueError("Record value contains a NUL character, which jsonb cannot store")
            return failure(job, worker, nul, with_traceback=False)
        return {
            "id": job.id,
            "attempt": job.attempt,
            "state": "completed",
            "meta": {"recorded": True, "return": result.value},
        }
    return None  # any other value: completed, the value is not kept


def chunk_outcome(job: Job, worker: Worker, result: ChunkResult) -> dict[str, Any] | None:
    """The ack of one job of a chunk whose `process` returned `result` (checked to name
    only jobs of the chunk): the outcome it names for the job, else completed."""
    job_id = job.id or 0
    if job_id in result.failed:
        error = result.failed[job_id]
        if isinstance(error, str):
            return failure(job, worker, ChunkJobError(error), with_traceback=False)
        return failure(job, worker, error, with_traceback=error.__traceback__ is not None)
    if job_id in result.snoozed:
        return snoozed(job, result.snoozed[job_id])
    if job_id in result.cancelled:
        return cancelled(job, result.cancelled[job_id])
    return None


class ChunkJobError(Exception):
    """A job of a chunk failed with a message (`ChunkResult(failed={id: "why"})`)."""


def snoozed(job: Job, seconds: float) -> dict[str, Any]:
    """Scheduled again; `max_attempts` grows by one so the snooze spends no attempt.

    This is Oban OSS's way (attempt keeps counting runs upwards), which keeps the
    `attempt` guard on acks sound: rolling attempt back would let a stale executor of
    the snoozed run ack the next one.
    """
    seconds = float(seconds)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"snooze seconds must be a finite number >= 0, got {seconds!r}")
    previous = job.meta.get("snoozed", 0) if isinstance(job.meta, dict) else 0
    count = (previous if isinstance(previous, int) and previous >= 0 else 0) + 1
    return {
        "id": job.id,
        "attempt": job.attempt,
        "state": "scheduled",
        "delay": min(float(seconds), MAX_DELAY),
        "snooze": True,
        "meta": {"snoozed": count},
    }


def cancelled(job: Job, reason: str) -> dict[str, Any]:
    """Cancelled by the worker; the reason is appended to `errors`."""
    return {
        "id": job.id,
        "attempt": job.attempt,
        "state": "cancelled",
        "error": error_entry(job, f"(Cancelled) {reason}"),
    }


def failure(
    job: Job, worker: Worker | None, exc: BaseException, *, with_traceback: bool = True
) -> dict[str, Any]:
    """Retryable with backoff while attempts remain, discarded after the last."""
    text = (
        "".join(traceback.format_exception(exc))
        if with_traceback
        else f"{type(exc).__name__}: {exc}"
    )
    entry = error_entry(job, text)
    if job.attempt >= job.max_attempts:
        return {"id": job.id, "attempt": job.attempt, "state": "discarded", "error": entry}
    return {
        "id": job.id,
        "attempt": job.attempt,
        "state": "retryable",
        "delay": _backoff(job, worker),
        "error": entry,
    }


def _backoff(job: Job, worker: Worker | None) -> float:
    if worker is None:
        return default_backoff(job.attempt, job.max_attempts)
    try:
        delay = float(worker.backoff(job))
    except Exception:
        log.exception("backoff() of %s failed; using the default", job.worker)
        return default_backoff(job.attempt, job.max_attempts)
    if not math.isfinite(delay):
        log.error("backoff() of %s returned %r; using the default", job.worker, delay)
        return default_backoff(job.attempt, job.max_attempts)
    return min(max(delay, 0.0), MAX_DELAY)


def unwritable(ack: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    """A plain replacement for an ack the database refused: same end state, no delay
    or meta, and an error that says what happened (it is written next cycle)."""
    state = ack["state"] if ack["state"] != "scheduled" else "retryable"
    log.error("the outcome of job %s could not be written (%s); recording an error", ack["id"], exc)
    text = f"kerrera: the job's outcome could not be recorded: {exc}"
    return {
        "id": ack["id"],
        "attempt": ack["attempt"],
        "state": state,
        "delay": 0.0,
        "error": _error(ack["attempt"], text),
        "unwritable": True,  # (a replacement is never replaced again)
    }


def error_entry(job: Job, text: str) -> dict[str, Any]:
    """An `errors` element as Oban writes it: at (ISO-8601 UTC), attempt, error."""
    return _error(job.attempt, text)


def _error(attempt: int, text: str) -> dict[str, Any]:
    at = datetime.now(UTC).replace(tzinfo=None).isoformat() + "Z"
    # jsonb rejects NUL characters; one in an exception message must not make the ack
    # (and every ack bundled with it) fail.
    return {"at": at, "attempt": attempt, "error": text.replace("\x00", "\\x00")}
