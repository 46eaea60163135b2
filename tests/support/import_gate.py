"""A worker module whose import waits for the test to open a gate (a slow import)."""

from __future__ import annotations

from kerrera import Job, worker
from support import held

held.gate("import").wait(60)


@worker(queue="default")
async def imported_late(job: Job) -> None:
    """Runs once its module has finished importing."""
    held.RUNS.append((job.id or 0, job.attempt))
