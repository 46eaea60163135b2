"""The engine contract: every job state transition the runtime needs, and nothing else."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kerrera._job import Job


@dataclass(slots=True)
class AckBatch:
    """Finished jobs waiting to be written, kept cheap to append to on the hot path.

    Plain completions are two parallel lists (the common case, one array each in SQL);
    every other outcome is a small dict (`id`, `attempt`, `state`, `delay`, `snooze`,
    `error`, `meta`); `released` are interrupted jobs to put back as available.
    """

    done_ids: list[int] = field(default_factory=list)
    done_attempts: list[int] = field(default_factory=list)
    other: list[dict[str, Any]] = field(default_factory=list)
    released_ids: list[int] = field(default_factory=list)
    released_attempts: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.done_ids) + len(self.other) + len(self.released_ids)

    def extend(self, older: AckBatch) -> None:
        """Put back acks from a failed flush so they are retried with the next one."""
        self.done_ids.extend(older.done_ids)
        self.done_attempts.extend(older.done_attempts)
        self.other.extend(older.other)
        self.released_ids.extend(older.released_ids)
        self.released_attempts.extend(older.released_attempts)


class Engine(Protocol):
    """What the runtime and the API ask of storage. Only engines speak SQL."""

    async def insert_jobs(self, jobs: Sequence[Job], conn: Any = None) -> list[Job]:
        """Insert jobs in one statement per batch, on `conn` when given."""

    async def fetch_jobs(
        self, queue: str, demand: int, acks: AckBatch, node: str, producer: str
    ) -> list[Job]:
        """Write `acks` and claim up to `demand` available jobs of `queue`, in one trip."""

    async def ack_jobs(self, acks: AckBatch) -> None:
        """Write `acks` (and release interrupted jobs) without fetching."""

    async def reclaim_jobs(self, queue: str, producer: str, running: Sequence[int]) -> int:
        """Put back jobs this producer fetched but never received; return how many."""

    async def heartbeat(self, producers: Sequence[tuple[str, str, str]]) -> None:
        """Record that these producers (uuid, node, queue) are alive."""

    async def forget_producers(self, uuids: Sequence[str]) -> None:
        """Remove producers that stopped cleanly."""

    async def rescue_jobs(self, ttl: float, rescue_after: float) -> tuple[int, int]:
        """Rescue orphaned executing jobs; return (jobs rescued, producers expired)."""

    async def stage_jobs(self, limit: int) -> dict[str, int]:
        """Make due scheduled/retryable jobs available; return counts by queue."""

    async def complete_job(self, job_id: int, attempt: int, conn: Any) -> bool:
        """Complete a running attempt on the caller's connection; False if it lost it."""

    async def get_jobs(self, ids: Sequence[int]) -> list[Job]:
        """Read jobs by id."""

    async def retry_jobs(self, ids: Sequence[int]) -> list[Job]:
        """Make jobs that are not running available again."""

    async def cancel_jobs(self, ids: Sequence[int]) -> list[Job]:
        """Cancel unfinished jobs (running ones are signalled to stop)."""

    async def delete_jobs(self, ids: Sequence[int]) -> list[Job]:
        """Delete jobs that are not running."""

    async def notify(self, channel: str, payload: str) -> None:
        """Send one notification."""
