"""The engine contract: every job state transition the runtime needs, and nothing else."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from kerrera.core.job import Job, RunningJob


@dataclass(slots=True)
class AckBatch:
    """Finished jobs waiting to be written, kept cheap to append to on the hot path.

    Plain completions are two parallel lists (the common case, one array each in SQL);
    every other outcome (retryable, discarded, cancelled, snoozed, completed with a
    recorded value) is a small dict in `outcomes` (`id`, `attempt`, `state`, `delay`,
    `snooze`, `error`, `meta`); `released` are interrupted jobs to put back as available.
    `producer` is the owner every ack is guarded by (`attempted_by[2]`, the uuid of the
    producer that fetched the job): a row that another producer holds now, or whose
    attempt was rolled back and fetched again elsewhere, never takes this ack.
    """

    producer: str = ""
    done_ids: list[int] = field(default_factory=list)
    done_attempts: list[int] = field(default_factory=list)
    outcomes: list[dict[str, Any]] = field(default_factory=list)
    released_ids: list[int] = field(default_factory=list)
    released_attempts: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.done_ids) + len(self.outcomes) + len(self.released_ids)


@dataclass(frozen=True, slots=True)
class QueueSignal:
    """How `set_queue_state` announces a queue command, in its transaction: `control` (a
    JSON object) on Kerrera's control channel, with the idents signalled added as
    `idents`; then one Oban `signal` payload, `head` + the ident as a JSON string + `tail`,
    per ident: each of `idents`, plus `<name>.<node>` for every name in `oban_peers` when
    `peers`."""

    control: str
    head: str
    tail: str
    idents: tuple[str, ...]
    peers: bool


#: A notification the engine hands over: a JSON object, or a payload already encoded.
Message = dict[str, Any] | str


class EngineNotifier(Protocol):
    """What the engine asks of the app's notifier (see `kerrera.notifier`): whether the
    statements' own `pg_notify` reaches its listeners, and, when it does not, how to
    hand over what they would have sent."""

    @property
    def transactional(self) -> bool:
        """True when `pg_notify` inside a statement reaches the listeners."""

    async def notify(self, channel: str, *messages: Message) -> None:
        """Deliver `messages` on `channel`."""

    def notify_threadsafe(
        self, channel: str, *messages: Message, hold: Callable[[], bool] | None = None
    ) -> None:
        """Deliver from any thread, once `hold()` (if given) returns False."""


class Engine(Protocol):
    """What the runtime and the API ask of storage. Only engines speak SQL."""

    async def insert_jobs(self, jobs: Sequence[Job], conn: Any = None) -> list[Job]:
        """Insert jobs in one statement per batch, on `conn` when given."""

    async def fetch_jobs(
        self, queue: str, demand: int, acks: AckBatch, node: str, producer: str
    ) -> list[RunningJob]:
        """Write `acks` and claim up to `demand` available jobs of `queue`, in one trip
        (one statement, `ack_and_fetch`)."""

    async def ack_jobs(self, acks: AckBatch) -> None:
        """Write `acks` (and release interrupted jobs) without fetching (`ack_and_fetch`
        with no demand)."""

    async def fetch_chunk(
        self, queue: str, worker: str, by: Sequence[str], partition: Sequence[Any],
        demand: int, node: str, producer: str,
    ) -> list[RunningJob]:  # fmt: skip
        """Claim up to `demand` available jobs of one chunk worker (and partition: the
        args keys `by` holding `partition`) for a chunk that `producer` is filling."""

    async def reclaim_jobs(self, queue: str, producer: str, running: Sequence[int]) -> int:
        """Put back jobs this producer fetched but never received; return how many."""

    async def heartbeat(self, producers: Sequence[tuple[str, str, str, str]]) -> None:
        """Record that these producers (uuid, node, queue, state as JSON) are alive."""

    async def forget_producers(self, uuids: Sequence[str]) -> None:
        """Remove producers that stopped cleanly."""

    async def rescue_jobs(self, ttl: float, rescue_after: float) -> tuple[int, int]:
        """Rescue orphaned executing jobs; return (jobs rescued, producers expired)."""

    async def stage_jobs(self, limit: int) -> dict[str, int]:
        """Make due scheduled/retryable jobs available; return counts by queue."""

    async def complete_job(
        self, job_id: int, attempt: int, conn: Any, owner: str | None = None
    ) -> bool:
        """Complete a running attempt (fetched by producer `owner`) on the caller's
        connection; False if it lost it."""

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

    async def elect_leader(self, name: str, node: str, started_at: datetime, lease: float) -> bool:
        """Take or renew the leadership lease of `name`; True while this instance holds it."""

    async def resign_leader(self, name: str, node: str, started_at: datetime) -> None:
        """Give the lease up (if held) and notify the other nodes."""

    async def get_leader(self, name: str) -> str | None:
        """The node holding the unexpired lease of `name`, if any."""

    async def prune_jobs(self, max_age: dict[str, float | None], limit: int) -> dict[str, int]:
        """Delete one bounded batch of old finished jobs; return counts by state."""

    async def job_indexes(self) -> list[tuple[str, bool]]:
        """The jobs table's indexes: (name, is a leftover of an interrupted rebuild)."""

    async def rebuild_index(self, name: str, *, drop: bool = False) -> None:
        """Rebuild (or drop) one index concurrently."""

    async def insert_cron(
        self, names: Sequence[str], plan: Callable[[dict[str, datetime], datetime], list[Job]]
    ) -> tuple[list[Job], datetime]:
        """Insert the jobs `plan(last ticks, now)` returns and advance the ticks, atomically."""

    async def db_now(self) -> datetime:
        """The database clock, naive UTC."""

    async def set_queue_state(
        self, queue: str, node: str, changes: dict[str, Any], signal: QueueSignal
    ) -> None:
        """Persist a queue command and announce it (`signal`) in one transaction."""

    async def instance_names(self) -> list[str]:
        """The instance names in `oban_peers` (signals for one node name them)."""

    async def queue_states(self, node: str) -> list[tuple[str, str, Any, Any, Any]]:
        """Persisted queue commands: (queue, node or '', paused, limit, running)."""

    async def producer_states(self, ttl: float) -> list[tuple[Any, ...]]:
        """What every live producer last reported."""
