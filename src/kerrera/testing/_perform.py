"""`perform_job`: run one job through the executor without a database."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kerrera.core import codec
from kerrera.core.context import CURRENT_APP
from kerrera.core.errors import ConfigError
from kerrera.core.job import Job, JobState
from kerrera.core.worker import Worker, resolve_worker
from kerrera.queue.executor import Executor
from kerrera.queue.observed import outcome_state
from kerrera.queue.recording import RecordingProgress
from kerrera.queue.threads import DaemonThreadPool

if TYPE_CHECKING:
    from kerrera.app.facade import Kerrera

_IDS = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How `perform_job` ended: `state` is completed, snoozed, cancelled, retryable or
    discarded. `value` is what `Record` kept, `error` the recorded error text (with its
    traceback), `exception` what was raised, `snooze` the seconds of a snooze, `reason`
    a cancel's reason, `backoff` the seconds before a retry, `progress` every report the
    job made, and `job` the job as it ran."""

    state: str
    job: Job = field(repr=False)
    value: Any = None
    error: str | None = None
    exception: BaseException | None = field(default=None, repr=False)
    snooze: float | None = None
    reason: str | None = None
    backoff: float | None = None
    progress: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def __repr__(self) -> str:
        shown = [self.state]
        if self.value is not None:
            shown.append(f"value={self.value!r}")
        if self.error is not None:
            shown.append(f"error={self.error.strip().splitlines()[-1]!r}")
        if self.snooze is not None:
            shown.append(f"snooze={self.snooze!r}")
        if self.reason is not None:
            shown.append(f"reason={self.reason!r}")
        return f"Outcome({', '.join(shown)})"

    @property
    def completed(self) -> bool:
        """True when the job completed."""
        return self.state == "completed"


async def perform_job(
    worker: Any, args: Any = None, *, attempt: int = 1, app: Kerrera | None = None,
    **opts: Any,
) -> Outcome:  # fmt: skip
    """Run a job of `worker` (a worker, or its name) with `args` through the executor,
    without a database, and return its `Outcome`.

    The job is built by `worker.new(args, **opts)`, so options are validated as for an
    insert, and its args must survive a JSON round trip unchanged (as they would through
    the table). `attempt` sets which attempt this is (for backoff and discard logic).
    Progress reports are kept in `Outcome.progress`. `current_app()` inside the job is
    `app` when given.

    Example:
        outcome = await testing.perform_job(Analyse, {"track_id": 7})
        assert outcome.state == "completed" and outcome.value == {"bpm": 120}
    """
    target = resolve_worker(worker) if isinstance(worker, str) else worker
    if not (
        isinstance(target, Worker) or (isinstance(target, type) and issubclass(target, Worker))
    ):
        raise ConfigError(f"perform_job needs a worker or a worker's name, got {worker!r}")
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        raise ConfigError(f"perform_job: attempt must be an int >= 1, got {attempt!r}")
    job = target.new(args, **opts)
    _round_trip(job)
    _as_running(job, attempt)
    recorder = RecordingProgress(job)
    job.progress_state = recorder
    threads = DaemonThreadPool(1, name="kerrera-perform")
    token = CURRENT_APP.set(app) if app is not None else None
    try:
        ack, error = await Executor(threads).execute(job)
    finally:
        threads.shutdown()  # (its idle thread would otherwise wait forever)
        if token is not None:
            CURRENT_APP.reset(token)
    return _outcome(job, ack, error, recorder.reports)


def _round_trip(job: Job) -> None:
    for name in ("args", "meta"):
        value = getattr(job, name)
        again = codec.loads(codec.dumps(value))
        if again != value:
            raise ConfigError(
                f"perform_job: {name} do not survive a JSON round trip: {value!r} comes "
                f"back as {again!r} (use lists, str keys and JSON types only)"
            )
        setattr(job, name, again)


def _as_running(job: Job, attempt: int) -> None:
    now = datetime.now(UTC).replace(tzinfo=None)
    job.id = next(_IDS)
    job.state = JobState.EXECUTING
    job.attempt = attempt
    job.max_attempts = max(job.max_attempts, attempt)
    job.inserted_at = job.scheduled_at = job.attempted_at = now
    job.attempted_by = ["perform_job", "perform_job"]


def _outcome(
    job: Job, ack: dict[str, Any] | None, error: BaseException | None,
    progress: list[dict[str, Any]],
) -> Outcome:  # fmt: skip
    state = outcome_state(ack)
    if ack is None:
        return Outcome(state, job, progress=progress)
    meta = ack.get("meta") or {}
    text = ack["error"]["error"] if "error" in ack else None
    return Outcome(
        state, job, value=meta.get("return"),
        error=text if state in ("retryable", "discarded") else None,
        exception=error, snooze=ack.get("delay") if state == "snoozed" else None,
        reason=text.removeprefix("(Cancelled) ") if state == "cancelled" and text else None,
        backoff=ack.get("delay") if state == "retryable" else None, progress=progress,
    )  # fmt: skip
