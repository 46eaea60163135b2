"""Workers for the tests of what a producer holds: each blocks its thread on a gate that
the test opens, and records every run (job id, attempt) so that a second run shows."""

from __future__ import annotations

import threading

from kerrera import Job, worker

RUNS: list[tuple[int, int]] = []
IMPORT_ATTEMPTS: list[str] = []  # appended to by support.import_fails on each try
_gates: dict[str, threading.Event] = {}
_lock = threading.Lock()


def reset() -> None:
    """Forget runs and open every gate left closed by an earlier test."""
    with _lock:
        RUNS.clear()
        IMPORT_ATTEMPTS.clear()
        for gate in _gates.values():
            gate.set()
        _gates.clear()


def gate(key: str) -> threading.Event:
    """The gate jobs with this key wait for."""
    with _lock:
        return _gates.setdefault(key, threading.Event())


def runs_of(job_id: int) -> list[int]:
    """The attempts with which `job_id` started here."""
    with _lock:
        return [attempt for i, attempt in RUNS if i == job_id]


def _record(job: Job) -> None:
    with _lock:
        RUNS.append((job.id or 0, job.attempt))


@worker(queue="default", max_attempts=3, timeout=0.2)
def stuck_past_timeout(job: Job) -> None:
    """A sync job whose thread outlives its 0.2 s timeout until its gate opens."""
    _record(job)
    gate(job.args["key"]).wait(60)


@worker(queue="default", max_attempts=3)
def blocking(job: Job) -> None:
    """A sync job that runs until its gate opens."""
    _record(job)
    gate(job.args["key"]).wait(60)


@worker(queue="default", max_attempts=3)
async def quick(job: Job) -> None:
    """An async job that completes at once."""
    _record(job)
