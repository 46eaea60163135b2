"""Running a job with telemetry: `job.start`, then `job.exception` for a failure, then
`job.stop` with the outcome (only while a handler listens, so the plain path pays
nothing for it); and what a job's end shares with it: writing held progress, naming
the outcome."""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kerrera import telemetry
from kerrera.core.errors import JobTimeoutError, UnknownWorkerError
from kerrera.core.job import Job

if TYPE_CHECKING:
    from kerrera.queue.executor import Executor

log = logging.getLogger("kerrera.executor")

#: Seconds a finished job waits for its last progress report to be written.
FLUSH_LIMIT = 5.0


async def observed(
    executor: Executor, job: Job, linger: Callable[[Job, asyncio.Future[None]], None] | None
) -> tuple[dict[str, Any] | None, BaseException | None]:
    """`executor.run(job)`, emitting the job events around it."""
    meta = job_metadata(job, executor.node or "")
    wait = queue_time(job)
    telemetry.execute("job.start", {"system_time": time.time(), "queue_time": wait}, meta)
    started = time.perf_counter()
    try:
        ack, error = await executor.run(job, linger)
        if job.progress_state is not None:
            await flush_progress(job)
    except asyncio.CancelledError:
        # Interrupted by the node: cancelled (cancel_job) or put back (shutdown).
        state = "cancelled" if job.cancel_requested else "released"
        took = {"duration": time.perf_counter() - started, "queue_time": wait}
        telemetry.execute("job.stop", took, {**meta, "state": state, "result": None})
        raise
    took = {"duration": time.perf_counter() - started, "queue_time": wait}
    state = outcome_state(ack)
    if state in ("retryable", "discarded"):
        telemetry.execute("job.exception", dict(took), {**meta, **failure_metadata(ack, error)})
    result = ack["meta"].get("return") if ack is not None and "meta" in ack else None
    telemetry.execute("job.stop", took, {**meta, "state": state, "result": result})
    return ack, error


async def flush_progress(job: Job) -> None:
    """Write the job's held progress report. The job has already ended, and its outcome
    must stand: a cancellation arriving now (a shutdown giving up, a cancel_job) is
    absorbed rather than turning a finished job into an interrupted one, and a write
    that hangs is abandoned after FLUSH_LIMIT seconds."""
    assert job.progress_state is not None
    task = asyncio.current_task()
    try:
        await asyncio.wait_for(asyncio.shield(job.progress_state.flush()), FLUSH_LIMIT)
    except asyncio.CancelledError:
        if task is not None:
            task.uncancel()
    except Exception as exc:  # progress is informative: the outcome is what matters
        log.warning("job %s: could not write its last progress (%r)", job.id, exc)


def job_metadata(job: Job, node: str) -> dict[str, Any]:
    """What every job event's metadata holds."""
    return {
        "job": job, "id": job.id, "worker": job.worker, "queue": job.queue,
        "attempt": job.attempt, "max_attempts": job.max_attempts, "tags": job.tags,
        "priority": job.priority, "node": node,
    }  # fmt: skip


def queue_time(job: Job) -> float:
    """Seconds the job waited between being due and starting."""
    if job.attempted_at is None or job.scheduled_at is None:
        return 0.0
    return max((job.attempted_at - job.scheduled_at).total_seconds(), 0.0)


def outcome_state(ack: dict[str, Any] | None) -> str:
    """completed, snoozed, cancelled, retryable or discarded."""
    if ack is None:
        return "completed"
    return "snoozed" if ack.get("snooze") else str(ack["state"])


def failure_metadata(ack: dict[str, Any] | None, error: BaseException | None) -> dict[str, Any]:
    """`state`, `kind`, `exception`, `error` and `traceback` of a failed job."""
    assert ack is not None
    text = str(ack.get("error", {}).get("error", ""))
    if error is None:
        kind = "error"
    elif isinstance(error, JobTimeoutError):
        kind = "timeout"
    elif isinstance(error, UnknownWorkerError):
        kind = "unknown_worker"
    elif isinstance(error, KeyboardInterrupt | SystemExit):
        kind = "exit"
    else:
        kind = "error"
    return {
        "state": ack["state"],
        "kind": kind,
        "exception": error,
        "error": f"{type(error).__name__}: {error}" if error is not None else text,
        "traceback": "".join(traceback.format_exception(error)) if error is not None else text,
    }
