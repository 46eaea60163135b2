"""The job row: `Job` mirrors every `oban_jobs` column, `JobState` mirrors its enum."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from kerrera.core.unique import Unique
    from kerrera.core.workflow import WorkflowStep


class ProgressSink(Protocol):
    """Takes a running job's progress reports (the throttled writer, or a recorder in
    tests)."""

    async def report(self, entry: dict[str, Any]) -> None:
        """Take one report."""

    async def flush(self) -> None:
        """Write whatever is held back (the job is ending)."""


#: States of jobs that have not finished (what queue depth counts).
UNFINISHED = ("available", "scheduled", "retryable", "executing", "suspended")


class JobState(enum.StrEnum):
    """States of a job, in the order of the database enum `oban_job_state`.

    Terminal states are `completed`, `cancelled` and `discarded`.
    """

    AVAILABLE = "available"
    SUSPENDED = "suspended"
    SCHEDULED = "scheduled"
    EXECUTING = "executing"
    RETRYABLE = "retryable"
    COMPLETED = "completed"
    DISCARDED = "discarded"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True for states a job never leaves on its own."""
        return self in _TERMINAL


_TERMINAL = frozenset({JobState.COMPLETED, JobState.CANCELLED, JobState.DISCARDED})


@dataclass(slots=True, eq=False)
class Job:
    """One job: the columns of `oban_jobs` under the same names.

    A `Job` built by `Worker.new()` is unsaved (`id is None`); `Kerrera.insert()` returns
    the saved row. Timestamps are naive UTC, as in the table. `conflict` is set on a
    job returned by an insert that hit an existing unique job (not a column).

    Example:
        job = await app.insert(Mailer.new({"to": "a@example.com"}, schedule_in=60))
        print(job.id, job.state, job.scheduled_at)
    """

    id: int | None = None
    state: JobState = JobState.AVAILABLE
    queue: str = "default"
    worker: str = ""
    args: dict[str, Any] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    attempt: int = 0
    max_attempts: int = 20
    inserted_at: datetime | None = None
    scheduled_at: datetime | None = None
    attempted_at: datetime | None = None
    completed_at: datetime | None = None
    attempted_by: list[str] | None = None
    discarded_at: datetime | None = None
    priority: int = 0
    tags: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    cancelled_at: datetime | None = None
    #: Seconds from now until the job is due, for an unsaved job (`schedule_in=`).
    schedule_in: float | None = field(default=None, repr=False)
    #: True when an insert returned an existing job instead of a new one.
    conflict: bool = field(default=False, repr=False)
    #: For an unsaved job: what makes it unique (`Unique`), or None.
    unique: Unique | None = field(default=None, repr=False)
    #: Set by the node running the job when it was cancelled (see `cancelled()`).
    cancel_requested: bool = field(default=False, repr=False)
    #: Where this running job's `progress()` reports go (set on its first report).
    progress_state: ProgressSink | None = field(default=None, repr=False)

    @property
    def owner(self) -> str | None:
        """The uuid of the producer running this attempt (`attempted_by[2]`), if any."""
        by = self.attempted_by
        return by[1] if by is not None and len(by) > 1 else None

    @property
    def workflow(self) -> WorkflowStep | None:
        """This job's place in a workflow (None for a job outside any): its ids and
        names, and `await job.workflow.context()`, `.results()`, `.graft(jobs)`."""
        from kerrera.core.workflow import step_of  # (workflow.py builds on this module)

        return step_of(self)

    def cancelled(self) -> bool:
        """True once this running job was cancelled (`cancel_job`, from any node). A sync
        worker cannot be interrupted: a long one should check this and return early."""
        return self.cancel_requested

    async def progress(
        self, percent: float | None = None, message: str | None = None, **data: Any
    ) -> None:
        """Report progress from inside a running job: stored as `meta["progress"]` and
        published to subscribers (`app.subscribe(job.id)`).

        `percent` is 0-100 (or None), `message` a short text, `data` any JSON values.
        Writes are throttled (at most one per `progress_interval`, default 0.25 s): a
        report that comes sooner is held, and the latest held one is written at the end
        of the interval or when the job ends, so the last word always lands.

        Example:
            for i, chunk in enumerate(chunks):
                process(chunk)
                await job.progress(100 * (i + 1) / len(chunks), "separating", stem=i)
        """
        await progress_reporter().report(self, percent, message, data)

    def progress_sync(
        self, percent: float | None = None, message: str | None = None, **data: Any
    ) -> None:
        """`progress()` for a sync worker (it runs in a thread): waits until the report
        is accepted (held or written)."""
        progress_reporter().report_from_thread(self, percent, message, data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Job):
            return NotImplemented
        if self.id is None or other.id is None:
            return self is other
        return self.id == other.id

    def __hash__(self) -> int:
        return hash(self.id) if self.id is not None else id(self)


if TYPE_CHECKING:

    class RunningJob(Job):
        """A job fetched or claimed to run: a saved row, so its `id` is an int.

        Only the type checker sees this class. At run time a running job is a plain
        `Job` (the engine builds one), so workers and users never meet a new type; the
        engine's fetch and claim are where a `Job` is known to be running.
        """

        id: int

else:
    RunningJob = Job


class ProgressReporter(Protocol):
    """Where `Job.progress()` reports go: the events layer (`kerrera.events.progress`)
    installs itself with `set_progress_reporter`, so that this core module needs no
    import of a layer above it."""

    async def report(self, job: Job, percent: Any, message: Any, data: dict[str, Any]) -> None:
        """`job.progress(...)`."""

    def report_from_thread(
        self, job: Job, percent: Any, message: Any, data: dict[str, Any]
    ) -> None:
        """`job.progress_sync(...)`."""


_REPORTER: list[ProgressReporter] = []


def set_progress_reporter(reporter: ProgressReporter) -> None:
    """Install what handles `Job.progress()` (done once, by `kerrera.events.progress`)."""
    _REPORTER[:] = [reporter]


def progress_reporter() -> ProgressReporter:
    """The installed reporter. Importing any part of Kerrera runs `kerrera/__init__`,
    which loads the events layer, so it is always there."""
    return _REPORTER[0]
