# mypy: disable-error-code="import-untyped"
"""Kerrera as a backend of Django's Tasks framework (`django.tasks`, Django >= 6.0).

Example (settings.py):
    INSTALLED_APPS = [..., "kerrera.contrib.django"]
    TASKS = {"default": {"BACKEND": "kerrera.contrib.django.tasks.KerreraBackend"}}
    KERRERA = {"queues": {"default": 10}}

    # shop/tasks.py
    from django.tasks import task

    @task(priority=10)
    def send_receipt(order_id: int) -> str: ...

    result = send_receipt.enqueue(order_id=7)        # an oban_jobs row, in your transaction
    send_receipt.get_result(result.id).status        # READY, RUNNING, SUCCESSFUL or FAILED

`manage.py kerrera start` (or any Kerrera node with the same queues) runs the tasks.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from typing import Any

try:
    from django.tasks import TaskContext, TaskResultStatus
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
except ImportError as exc:  # Django < 6.0
    import django

    raise ImportError(
        "kerrera.contrib.django.tasks needs Django >= 6.0 (the django.tasks framework); "
        f"Django {django.get_version()} is installed"
    ) from exc
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone
from django.utils.json import normalize_json

from kerrera import ConfigError, Job, Record
from kerrera.contrib.django.shared import get_app, insert
from kerrera.contrib.django.task_results import (
    META_KEY,
    task_of,
    task_result,
    to_job_time,
)
from kerrera.contrib.django.workers import worker
from kerrera.core.options import check_max_attempts, check_queue

#: `OPTIONS` this backend understands, with their defaults.
DEFAULT_OPTIONS: dict[str, Any] = {"max_attempts": 20}


def job_priority(priority: int) -> int:
    """Django's priority (-100 lowest .. 100 highest, 0 by default) as Oban's (0 runs
    first .. 9 last): the range is cut into ten equal steps, so 100 -> 0, 0 -> 4,
    -100 -> 9, and a higher Django priority never runs later."""
    return (100 - priority) * 9 // 200


class KerreraBackend(BaseTaskBackend):  # type: ignore[misc]  # Django is untyped
    """A `TASKS` backend that stores each enqueued task as a Kerrera job.

    Supports `run_after` (the job is scheduled), async task functions, `priority` (see
    `job_priority`), `queue_name` (the job's queue; restrict them with `QUEUES`) and
    `get_result` from any process. Tasks are inserted on Django's connection, so inside
    `transaction.atomic()` a task exists only if the block commits: no `on_commit` needed.

    `OPTIONS`: `max_attempts` (20): runs of a task that raises before it is FAILED (1 for
    Django's "fail once"; until then its result is READY with the errors so far).

    Example:
        TASKS = {"default": {
            "BACKEND": "kerrera.contrib.django.tasks.KerreraBackend",
            "QUEUES": ["default", "mail"],
            "OPTIONS": {"max_attempts": 5},
        }}
    """

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.max_attempts = _options(alias, self.options)["max_attempts"]

    def validate_task(self, task: Any) -> None:
        """Django's checks, then the queue name as Kerrera accepts it."""
        super().validate_task(task)
        try:
            check_queue(task.queue_name, "queue_name")
        except ConfigError as exc:
            raise InvalidTask(str(exc)) from None
        runner(task)  # so that a node importing the task's module can run its jobs

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        """Insert a job for `task(*args, **kwargs)` and return its `TaskResult` (READY).

        Arguments must be JSON values (Django normalises tuples to lists).
        """
        self.validate_task(task)
        call = {"args": normalize_json(list(args)), "kwargs": normalize_json(dict(kwargs))}
        # What the row cannot hold, for get_result(): Django's priority, the alias.
        options = {"backend": self.alias, "priority": task.priority}
        when = to_job_time(task.run_after)
        if when is not None:
            options["run_after"] = when.isoformat() + "+00:00"
        job = insert(
            runner(task).new(
                call,
                queue=task.queue_name,
                priority=job_priority(task.priority),
                max_attempts=self.max_attempts,
                scheduled_at=when,
                meta={META_KEY: options},
            )
        )
        result = task_result(job, task)
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> Any:
        """The `TaskResult` of the job whose id is `result_id`, read now.

        Raises `TaskResultDoesNotExist` for an unknown id or a job that is no Django task.
        """
        try:
            job_id = int(result_id)
        except (TypeError, ValueError):
            raise TaskResultDoesNotExist(f"no task result {result_id!r}") from None
        job = get_app().sync.get_job(job_id)
        if job is None:
            raise TaskResultDoesNotExist(f"no task result {result_id!r}")
        return task_result(job, task_of(job))


def _options(alias: str, given: Any) -> dict[str, Any]:
    if not isinstance(given, dict):
        raise ImproperlyConfigured(f"TASKS[{alias!r}]['OPTIONS'] must be a dict, got {given!r}")
    unknown = sorted(set(given) - set(DEFAULT_OPTIONS))
    if unknown:
        raise ImproperlyConfigured(
            f"TASKS[{alias!r}]['OPTIONS']: unknown option {unknown[0]!r} "
            f"(KerreraBackend takes {', '.join(sorted(DEFAULT_OPTIONS))})"
        )
    options = {**DEFAULT_OPTIONS, **given}
    try:
        check_max_attempts(options["max_attempts"])
    except ConfigError as exc:
        raise ImproperlyConfigured(f"TASKS[{alias!r}]['OPTIONS']: {exc}") from None
    return options


# -- running tasks on a node -----------------------------------------------------------

_runners: dict[str, tuple[Callable[..., Any], Any]] = {}  # dotted path -> (function, worker)
_lock = threading.Lock()


def runner(task: Any) -> Any:
    """The Kerrera worker that runs `task`'s function, named by the task's dotted path.

    It is registered when a task is built (Django validates every Task with its
    backend): a node that meets a job of that name imports the task's module, whose
    `@task` decorator builds the Task and so registers the worker.
    """
    name = task.module_path
    with _lock:
        known = _runners.get(name)
        if known is None or known[0] is not task.func:  # new, or its module was reloaded
            known = _runners[name] = (task.func, worker(_run_function(task), name=name))
        return known[1]


def _run_function(task: Any) -> Callable[[Job], Any]:
    def arguments(job: Job, result: Any) -> tuple[list[Any], dict[str, Any]]:
        args = list(job.args.get("args", []))
        if task.takes_context:
            args.insert(0, TaskContext(task_result=result))
        return args, dict(job.args.get("kwargs", {}))

    if inspect.iscoroutinefunction(task.func):

        async def run_async(job: Job) -> Record:
            running, result = _started(job)
            args, kwargs = arguments(job, result)
            try:
                value = normalize_json(await running.acall(*args, **kwargs))
            except BaseException:
                _finished(result, TaskResultStatus.FAILED)
                raise
            _finished(result, TaskResultStatus.SUCCESSFUL, value)
            return Record(value)

        return run_async

    def run(job: Job) -> Record:
        running, result = _started(job)
        args, kwargs = arguments(job, result)
        try:
            value = normalize_json(running.call(*args, **kwargs))
        except BaseException:
            _finished(result, TaskResultStatus.FAILED)
            raise
        _finished(result, TaskResultStatus.SUCCESSFUL, value)
        return Record(value)

    return run


def _started(job: Job) -> tuple[Any, Any]:
    running = task_of(job)
    result = task_result(job, running, TaskResultStatus.RUNNING)
    task_started.send(KerreraBackend, task_result=result)
    return running, result


def _finished(result: Any, status: Any, value: Any = None) -> None:
    # Sent per attempt: a failed attempt that will be retried is reported FAILED here,
    # while get_result() says READY until the last attempt has failed.
    object.__setattr__(result, "status", status)
    object.__setattr__(result, "finished_at", timezone.now())
    if status == TaskResultStatus.SUCCESSFUL:
        object.__setattr__(result, "_return_value", value)
    task_finished.send(KerreraBackend, task_result=result)
