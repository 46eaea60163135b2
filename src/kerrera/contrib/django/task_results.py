# mypy: disable-error-code="import-untyped"
"""Kerrera jobs seen as Django 6 `TaskResult`s: status, times, errors and return value.

A Django task enqueued through `KerreraBackend` is one `oban_jobs` row whose `worker` is
the task's dotted path, whose `args` are `{"args": [...], "kwargs": {...}}` and whose
`meta["django_task"]` keeps what the row cannot hold (Django's own priority, the backend
alias). The return value is the job's recorded result (`meta["return"]`).
"""

from __future__ import annotations

import builtins
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.tasks.base import TaskError, TaskResult, TaskResultStatus
from django.tasks.exceptions import TaskResultDoesNotExist
from django.utils import timezone
from django.utils.module_loading import import_string

from kerrera import Job, JobState

#: The key of `Job.meta` that marks a job as a Django task and keeps its Django options.
META_KEY = "django_task"

#: Kerrera's states as Django's: not started yet (or waiting to run again) is READY.
STATUS = {
    JobState.AVAILABLE: TaskResultStatus.READY,
    JobState.SCHEDULED: TaskResultStatus.READY,
    JobState.RETRYABLE: TaskResultStatus.READY,
    JobState.SUSPENDED: TaskResultStatus.READY,
    JobState.EXECUTING: TaskResultStatus.RUNNING,
    JobState.COMPLETED: TaskResultStatus.SUCCESSFUL,
    JobState.DISCARDED: TaskResultStatus.FAILED,
    JobState.CANCELLED: TaskResultStatus.FAILED,
}
_FINISHED = (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED)


def task_of(job: Job) -> Any:
    """The Django `Task` that `job` runs, with the job's queue, priority and backend.

    Raises `TaskResultDoesNotExist` for a job that is not a Django task.
    """
    options = job.meta.get(META_KEY)
    if not isinstance(options, dict):
        raise TaskResultDoesNotExist(f"job {job.id} ({job.worker}) is not a Django task")
    try:
        task = import_string(job.worker)
    except ImportError as exc:
        raise TaskResultDoesNotExist(
            f"job {job.id}: its task {job.worker!r} cannot be imported: {exc}"
        ) from exc
    if not callable(getattr(task, "using", None)):  # not a Task (renamed by hand?)
        raise TaskResultDoesNotExist(f"job {job.id}: {job.worker!r} is not a Django task")
    return task.using(
        priority=options.get("priority"),
        queue_name=job.queue,
        backend=options.get("backend"),
        run_after=_parse_time(options.get("run_after")),
    )


def task_result(job: Job, task: Any, status: Any = None) -> Any:
    """The `TaskResult` of `job` (running `task`); `status` overrides the job's state.

    `worker_ids` repeats the node of the latest attempt once per attempt: `oban_jobs`
    keeps only the last node, and Django counts attempts as `len(worker_ids)`.
    """
    status = status or STATUS[job.state]
    node = (job.attempted_by or ["?"])[0]
    result = TaskResult(
        task=task,
        id=str(job.id),
        status=status,
        enqueued_at=_aware(job.inserted_at),
        started_at=_aware(job.attempted_at),
        finished_at=_aware(_finished_at(job)) if status in _FINISHED else None,
        last_attempted_at=_aware(job.attempted_at),
        args=job.args.get("args", []),
        kwargs=job.args.get("kwargs", {}),
        backend=task.backend,
        errors=[task_error(entry) for entry in job.errors],
        worker_ids=[node] * job.attempt,
    )
    if status == TaskResultStatus.SUCCESSFUL:
        object.__setattr__(result, "_return_value", job.meta.get("return"))
    return result


def task_error(entry: dict[str, Any]) -> Any:
    """A `TaskError` of one `errors` element (Oban's `{"at", "attempt", "error"}`).

    Kerrera stores the formatted traceback; the exception's dotted path is its last
    line's prefix (Python leaves out `builtins.`, which is put back).
    """
    text = str(entry.get("error", ""))
    return TaskError(exception_class_path=exception_path(text), traceback=text)


def exception_path(text: str) -> str:
    """The dotted path of the exception a traceback (or Kerrera error text) ends with."""
    if text.startswith("(Cancelled)"):
        return "kerrera.CancelJob"
    lines = [line for line in text.strip().splitlines() if line and not line[0].isspace()]
    name = lines[-1].split(":", 1)[0].strip() if lines else ""
    if "." in name and all(part.isidentifier() for part in name.split(".")):
        return name
    found = getattr(builtins, name, None) if name.isidentifier() else None
    if isinstance(found, type) and issubclass(found, BaseException):
        return f"builtins.{name}"
    return "builtins.Exception"  # not an exception's text (a Kerrera message)


def to_job_time(value: datetime | None) -> datetime | None:
    """Django's `run_after` as the naive UTC the table stores (naive means local time
    when `USE_TZ` is False, as everywhere in Django)."""
    if value is None:
        return None
    if timezone.is_naive(value):
        value = timezone.make_aware(value)
    return value.astimezone(UTC).replace(tzinfo=None)


def _finished_at(job: Job) -> datetime | None:
    return job.completed_at or job.discarded_at or job.cancelled_at


def _aware(value: datetime | None) -> datetime | None:
    # The table's naive UTC, as Django hands out datetimes under its USE_TZ setting.
    if value is None:
        return None
    aware = value.replace(tzinfo=UTC)
    return aware if settings.USE_TZ else timezone.make_naive(aware)


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if settings.USE_TZ else timezone.make_naive(parsed)
