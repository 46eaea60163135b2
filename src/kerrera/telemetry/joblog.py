"""One human-readable line per job outcome on the `kerrera.jobs` logger.

A running node logs, whatever else is configured:
- WARNING for a failure that will be retried (with the exception's line) and for a
  cancelled job;
- ERROR, with the traceback, for a job discarded (no attempts left);
- INFO for each finished job (completed, snoozed, or put back at shutdown), with its
  worker, id, queue, duration and attempt, as Celery's worker does.

Python's last-resort handler prints WARNING and above to stderr even when logging was
never configured, so a failing job is never silent. Raise or lower the level by the
logger's name:

    logging.getLogger("kerrera.jobs").setLevel(logging.ERROR)  # discarded jobs only

The lines come from the `job.exception` and `job.stop` telemetry events, listened to
while a node runs (`start_job_log` / `stop_job_log`, called by the node). A level above
ERROR set before the node starts also spares each job the cost of those events.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from kerrera.telemetry.bus import attach, detach

#: The logger's name, and the id of the telemetry handler behind it.
JOB_LOGGER = "kerrera.jobs"

log = logging.getLogger(JOB_LOGGER)
_lock = threading.Lock()
_running = 0  # nodes running in this process; the handler is attached while > 0
# What each `job.stop` state says, and at which level (failures come with job.exception).
_STOPS = {
    "completed": (logging.INFO, "completed"),
    "snoozed": (logging.INFO, "snoozed"),
    "released": (logging.INFO, "put back to available by the shutdown"),
    "cancelled": (logging.WARNING, "cancelled"),
}


def start_job_log() -> None:
    """A node starts: listen to job outcomes (once for all the nodes of the process),
    unless the `kerrera.jobs` logger is set above ERROR."""
    global _running
    with _lock:
        _running += 1
        if _running == 1 and log.isEnabledFor(logging.ERROR):
            # A handler may have been left by a node that never stopped: replace it.
            detach(JOB_LOGGER)
            attach(JOB_LOGGER, ("job.stop", "job.exception"), _handle)


def stop_job_log() -> None:
    """A node stopped: the last one to stop detaches the handler, so that a process with
    no running node pays nothing for job events."""
    global _running
    with _lock:
        _running = max(_running - 1, 0)
        if _running == 0:
            detach(JOB_LOGGER)


def _handle(event: str, measurements: dict[str, Any], metadata: dict[str, Any]) -> None:
    state = metadata.get("state")
    if event == "job.exception":
        if state == "discarded":
            _failed(logging.ERROR, "discarded, no attempts left", measurements, metadata)
        else:
            _failed(logging.WARNING, "will retry", measurements, metadata)
        return
    level, what = _STOPS.get(str(state), (logging.INFO, str(state)))
    if state in ("retryable", "discarded") or not log.isEnabledFor(level):
        return  # (a failure was logged from its job.exception event)
    log.log(
        level, "job %s %s %s %s %s (%s)", metadata.get("id"), metadata.get("worker"), what,
        "in" if state == "completed" else "after", _seconds(measurements), _where(metadata),
        extra=_extra(measurements, metadata),
    )  # fmt: skip


def _failed(level: int, what: str, measurements: dict[str, Any], meta: dict[str, Any]) -> None:
    if not log.isEnabledFor(level):
        return
    error = meta.get("exception")
    text = str(meta.get("error") or "unknown error").strip()
    first, _, rest = text.partition("\n")
    exc_info = None
    if level >= logging.ERROR and meta.get("kind") != "unknown_worker":
        # The traceback for a job that will not run again; an unknown worker's is noise.
        if isinstance(error, BaseException):
            exc_info = (type(error), error, error.__traceback__)
        elif meta.get("traceback") and meta.get("traceback") != text:
            first = f"{first}\n{str(meta['traceback']).rstrip()}"
    elif rest:
        first += " ..."
    log.log(
        level, "job %s %s failed after %s (%s; %s): %s", meta.get("id"), meta.get("worker"),
        _seconds(measurements), _where(meta), what, first, exc_info=exc_info,
        extra=_extra(measurements, meta),
    )  # fmt: skip


def _where(meta: dict[str, Any]) -> str:
    return f"queue {meta.get('queue')}, attempt {meta.get('attempt')}/{meta.get('max_attempts')}"


def _seconds(measurements: dict[str, Any]) -> str:
    duration = measurements.get("duration")
    if not isinstance(duration, float):
        return "?"
    return f"{duration * 1000:.1f}ms" if duration < 1 else f"{duration:.2f}s"


def _extra(measurements: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """Fields for structured log handlers (JSON formatters read them off the record)."""
    return {
        "job_id": meta.get("id"), "worker": meta.get("worker"), "queue": meta.get("queue"),
        "attempt": meta.get("attempt"), "state": meta.get("state"),
        "duration": measurements.get("duration"),
    }  # fmt: skip
