"""One account of every job a producer holds, from its fetch until its ack is written.

A producer holds a job while any of these is true: its body runs; the body ended but the
sync thread that ran it has not (a timeout or a pkill cannot stop a thread); its outcome
waits to be written or is being written; the database refused to write it. While a job is
held, nothing may put it back to `available`: not the reclaim after a failed cycle, not a
shutdown, or it would run a second time beside (or after) the run that holds it.

Everything the producer decides about its jobs is derived here from one entry per job,
so that the rules live in one place and can be tested without a database or a loop:
- `held_ids`: what a reclaim must leave alone (all of it);
- `busy`: slots taken (bodies and threads still running);
- `take` / `written` / `put_back` / `refuse`: the life of an ack;
- `settled`: whether a stopping producer has nothing left to wait for.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from kerrera.engine.base import AckBatch


class _Release:
    """The outcome of a job interrupted by shutdown: back to available, attempt not spent."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "RELEASE"


#: Outcome of an interrupted job (see `_Release`).
RELEASE: Final = _Release()


class _Undecided:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNDECIDED"


_UNDECIDED: Final = _Undecided()

#: What a job ended with: None (plainly completed), RELEASE, or an ack dict (`id`,
#: `attempt`, `state`, ...) in the shape the engine's ack statement reads.
Outcome = dict[str, Any] | _Release | None


class Phase(enum.Enum):
    """Where a held job is. Derived from its entry, never stored."""

    RUNNING = "running"  # its body runs
    LINGERING = "lingering"  # its body ended, its sync thread runs on; its ack waits
    ACK_PENDING = "ack pending"  # its outcome is queued or being written
    ACK_REFUSED = "ack refused"  # the database refused its ack: retried alone, later


@dataclass(slots=True, eq=False)
class Held:
    """One job a producer holds."""

    job_id: int
    attempt: int
    body: bool = True  # its body (the job's task) still runs
    thread: bool = False  # a sync thread still runs its code
    outcome: Outcome | _Undecided = _UNDECIDED
    queued: bool = False  # its ack waits in the ready list
    in_flight: bool = False  # its ack is being written now
    refused: bool = False  # its ack waits to be tried again alone, at `retry_at`
    refusals: int = 0  # how often the database refused its ack
    retry_at: float = 0.0  # when a refused ack is tried again (monotonic seconds)

    @property
    def phase(self) -> Phase:
        """Where this job is (see `Phase`)."""
        if self.body:
            return Phase.RUNNING
        if self.thread:
            return Phase.LINGERING
        if self.refused:
            return Phase.ACK_REFUSED
        return Phase.ACK_PENDING

    @property
    def decided(self) -> bool:
        """Whether its outcome is known."""
        return self.outcome is not _UNDECIDED


class Ledger:
    """Every job one producer holds, by id, with its phase."""

    def __init__(self) -> None:
        # By (id, attempt): a job rescued elsewhere and fetched here again while a stale
        # run of it is still held has two entries, each accounted for on its own.
        self._held: dict[tuple[int, int], Held] = {}
        self._ready: list[Held] = []  # outcomes to write in the next cycle, in order
        self._busy = 0  # entries whose body or thread runs
        self._abandoned = False  # the process exits: threads no longer hold anything
        self._refused: set[Held] = set()  # entries waiting to be retried alone (rare)

    # -- reading ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._held)

    def __iter__(self) -> Iterator[Held]:
        return iter(list(self._held.values()))

    def held_ids(self) -> list[int]:
        """Every job held: none of them may be reclaimed or released by anyone else."""
        return sorted({job_id for job_id, _attempt in self._held})

    @property
    def busy(self) -> int:
        """Slots taken: jobs whose body or sync thread still runs."""
        return self._busy

    def running_ids(self) -> list[int]:
        """Jobs whose body runs now."""
        return sorted(h.job_id for h in self._held.values() if h.body)

    def in_phase(self, phase: Phase) -> list[int]:
        """Jobs in `phase`, by id."""
        return sorted(h.job_id for h in self._held.values() if h.phase is phase)

    @property
    def has_ready(self) -> bool:
        """Whether some outcome waits to be written."""
        return bool(self._ready)

    def settled(self, *, wait_threads: bool) -> bool:
        """Whether a stopping producer may end: no body runs, no ack waits or is being
        written, and (with `wait_threads`) no sync thread runs on. Refused acks and,
        without `wait_threads`, lingering threads are left behind: those jobs stay
        executing, for the lifeline to rescue once this producer's heartbeat expires."""
        for h in self._held.values():
            if h.body or h.queued or h.in_flight or (wait_threads and h.thread):
                return False
        return True

    def due(self, now: float) -> list[Held]:
        """Refused acks whose retry time has come."""
        if not self._refused:  # (the hot path: read on every wake-up)
            return []
        return [h for h in self._refused if not h.in_flight and h.retry_at <= now]

    def next_retry(self) -> float | None:
        """When the next refused ack is due (None: no refused ack)."""
        if not self._refused:
            return None
        times = [h.retry_at for h in self._refused if not h.in_flight]
        return min(times) if times else None

    # -- a job's life ----------------------------------------------------------------------
    def start(self, job_id: int, attempt: int) -> Held:
        """A fetched job whose body starts now."""
        entry = Held(job_id, attempt)
        self._held[job_id, attempt] = entry
        self._busy += 1
        return entry

    def linger(self, entry: Held) -> None:
        """The job's sync thread will outlive its body (called before `end`)."""
        if not entry.thread and not self._abandoned:
            entry.thread = True
            if not entry.body:
                self._busy += 1

    def end(self, entry: Held, outcome: Outcome) -> None:
        """The job's body ended with `outcome`: written next cycle, or once its thread
        is free if one lingers."""
        if not entry.body:
            return
        entry.body = False
        entry.outcome = outcome
        if not entry.thread:
            self._busy -= 1
            self._queue(entry)

    def thread_done(self, entry: Held) -> None:
        """The job's sync thread is free: an outcome that waited for it is now ready."""
        if not entry.thread:
            return
        entry.thread = False
        if not entry.body:
            self._busy -= 1
            if entry.decided and not entry.queued and not entry.in_flight:
                self._queue(entry)

    def abandon_threads(self) -> None:
        """The process is about to exit, and its daemon threads with it: outcomes that
        wait for a thread are ready now (an interrupted job can be released safely),
        and threads that outlive their jobs from now on hold nothing."""
        self._abandoned = True
        for entry in self._held.values():
            if not entry.thread:
                continue
            entry.thread = False
            if entry.body:  # (still counted as busy by its body; `end` queues it)
                continue
            self._busy -= 1
            if entry.decided and not entry.queued and not entry.in_flight:
                self._queue(entry)

    # -- writing acks ----------------------------------------------------------------------
    def take(self, producer: str) -> tuple[AckBatch, list[Held]]:
        """Every ready outcome as one batch to write now (owned by `producer`)."""
        taken, self._ready = self._ready, []
        for entry in taken:
            entry.queued = False
            entry.in_flight = True
        return batch_of(taken, producer), taken

    def take_one(self, entry: Held, producer: str) -> AckBatch:
        """One ack, alone, to try again now."""
        entry.queued = False
        entry.refused = False
        self._refused.discard(entry)
        entry.in_flight = True
        return batch_of([entry], producer)

    def written(self, entries: list[Held]) -> None:
        """These acks were written (or matched nothing): the jobs are no longer held."""
        for entry in entries:
            entry.in_flight = False
            if self._held.get((entry.job_id, entry.attempt)) is entry:
                del self._held[entry.job_id, entry.attempt]

    def put_back(self, entries: list[Held]) -> None:
        """Writing these acks failed for a passing reason: write them next cycle."""
        for entry in entries:
            entry.in_flight = False
            if self._held.get((entry.job_id, entry.attempt)) is entry and not entry.queued:
                self._queue(entry)

    def replace(self, entry: Held, outcome: Outcome) -> None:
        """Write `outcome` instead of the one the database refused."""
        entry.outcome = outcome

    def refuse(self, entry: Held, retry_at: float, *, counted: bool = True) -> None:
        """Writing this ack failed: keep holding the job, try it again alone at
        `retry_at`. `counted`: the database itself refused it (not a lost connection)."""
        entry.in_flight = False
        entry.queued = False
        entry.refused = True
        self._refused.add(entry)
        entry.retry_at = retry_at
        if counted:
            entry.refusals += 1

    def _queue(self, entry: Held) -> None:
        entry.queued = True
        self._ready.append(entry)


def batch_of(entries: list[Held], producer: str) -> AckBatch:
    """The ack statement's input for these entries (all decided)."""
    batch = AckBatch(producer=producer)
    for entry in entries:
        outcome = entry.outcome
        if outcome is None:
            batch.done_ids.append(entry.job_id)
            batch.done_attempts.append(entry.attempt)
        elif outcome is RELEASE:
            batch.released_ids.append(entry.job_id)
            batch.released_attempts.append(entry.attempt)
        else:
            batch.outcomes.append(outcome)  # type: ignore[arg-type]
    return batch
