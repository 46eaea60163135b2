"""Progress kept in memory: for jobs run by `perform_job`, and inline jobs whose
database writes belong to the caller's open transaction."""

from __future__ import annotations

from typing import Any

from kerrera.core.job import Job


class RecordingProgress:
    """Stands in for the throttled writer: every report is kept, in order, and the last
    one is set as `job.meta["progress"]`; nothing is written or published."""

    def __init__(self, job: Job) -> None:
        self._job = job
        self.reports: list[dict[str, Any]] = []

    async def report(self, entry: dict[str, Any]) -> None:
        """Keep `entry`."""
        self.reports.append(entry)
        self._job.meta["progress"] = entry

    async def flush(self) -> None:
        """Nothing is held back."""
