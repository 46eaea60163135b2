"""Kerrera as a backend of Django 6's Tasks framework, against a real PostgreSQL.

Tasks are enqueued through Django (`TASKS` in `djsite`), a real Kerrera node runs them
in this process, and `get_result` reads their outcome back from the job row.
Django >= 6.0 needs Python >= 3.12: on older Django these tests are skipped.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import django
import djsite
import pytest
from acceptance.nodes import until

from kerrera import Job

# The fixtures every Django test module shares (Django itself is set up once).
django_site = djsite.django_site
kerrera_settings = djsite.kerrera_settings

SQL = Callable[..., list[tuple[Any, ...]]]

pytestmark = [
    pytest.mark.usefixtures("kerrera_settings"),
    pytest.mark.skipif(
        django.VERSION < (6, 0),
        reason="django.tasks needs Django >= 6.0 (which needs Python >= 3.12)",
    ),
]


def _run_until_finished(*job_ids: int | str, queues: dict[str, int] | None = None) -> list[Job]:
    """Start a real node on the test schema until every job is finished."""
    from kerrera.contrib.django import build_app

    async def run() -> list[Job]:
        node = build_app(
            queues=queues or {"default": 2, "mail": 1}, node=f"n-{uuid.uuid4().hex[:6]}"
        )
        async with node, asyncio.timeout(60):
            return [await _finished(node, int(i)) for i in job_ids]

    return asyncio.run(run())


async def _finished(node: Any, job_id: int) -> Job:
    while not (job := await node.get_job(job_id)).state.terminal:
        await asyncio.sleep(0.05)
    return job  # type: ignore[no-any-return]


def test_an_enqueued_task_is_a_job_a_node_runs_and_its_result_comes_back(sql: SQL) -> None:
    from django.tasks import TaskResultStatus
    from djsite_tasks import add

    result = add.enqueue(2, b=3)
    assert (result.status, result.backend, result.args, result.kwargs) == (
        TaskResultStatus.READY, "default", [2], {"b": 3},
    )  # fmt: skip
    assert sql(
        "SELECT worker, queue, args, priority FROM oban_jobs WHERE id = %s", [int(result.id)]
    ) == [("djsite_tasks.add", "default", {"args": [2], "kwargs": {"b": 3}}, 4)]
    [job] = _run_until_finished(result.id)
    got = add.get_result(result.id)
    assert (got.status, got.return_value, got.attempts, got.errors) == (
        TaskResultStatus.SUCCESSFUL, 5, 1, [],
    )  # fmt: skip
    assert got.worker_ids == [job.attempted_by[0]]  # type: ignore[index]
    assert got.enqueued_at <= got.started_at <= got.finished_at
    assert got.finished_at.tzinfo is not None
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL and result.return_value == 5


def test_queue_priority_and_kwargs_reach_the_job(sql: SQL) -> None:
    from djsite_tasks import shout

    high = shout.using(priority=100).enqueue("hi", times=2)
    low = shout.using(priority=-100).enqueue("lo")
    rows = sql(
        "SELECT queue, priority FROM oban_jobs WHERE id = ANY(%s) ORDER BY id",
        [[int(high.id), int(low.id)]],
    )
    assert rows == [("mail", 0), ("mail", 9)]
    _run_until_finished(high.id, low.id)
    assert shout.get_result(high.id).return_value == {"text": "HIHI"}
    assert shout.get_result(high.id).task.priority == 100  # Django's own, kept in meta


def test_a_task_that_raises_is_failed_with_its_exception_and_traceback() -> None:
    from django.tasks import TaskResultStatus
    from djsite_tasks import fail

    result = fail.enqueue("no such order")
    _run_until_finished(result.id)
    got = fail.get_result(result.id)
    assert got.status == TaskResultStatus.FAILED
    [error] = got.errors
    assert error.exception_class is LookupError
    assert "no such order" in error.traceback and "Traceback" in error.traceback
    with pytest.raises(ValueError, match="Task failed"):
        _ = got.return_value


def test_with_attempts_left_a_failed_run_is_ready_again() -> None:
    from django.tasks import TaskResultStatus
    from djsite_tasks import fail

    result = fail.using(backend="patient").enqueue("later")  # max_attempts 20
    _run_until_finished_or_retryable(result.id)
    got = fail.using(backend="patient").get_result(result.id)
    assert (got.status, got.attempts, len(got.errors)) == (TaskResultStatus.READY, 1, 1)
    assert got.backend == "patient"


def _run_until_finished_or_retryable(job_id: str) -> None:
    from kerrera.contrib.django import build_app

    async def run() -> None:
        async with build_app(queues={"default": 1}) as node, asyncio.timeout(60):
            while (await node.get_job(int(job_id))).state != "retryable":
                await asyncio.sleep(0.05)

    asyncio.run(run())


async def test_async_tasks_enqueue_and_read_results_asynchronously() -> None:
    from asgiref.sync import sync_to_async
    from django.db import connections
    from django.tasks import TaskResultStatus
    from djsite_tasks import add_later

    from kerrera.contrib.django import build_app

    result = await add_later.aenqueue(20, 22)
    async with build_app(queues={"default": 2}) as node, asyncio.timeout(60):
        await _finished(node, int(result.id))
    got = await add_later.aget_result(result.id)
    assert (got.status, got.return_value) == (TaskResultStatus.SUCCESSFUL, 42)
    await result.arefresh()
    assert result.is_finished
    await sync_to_async(connections.close_all, thread_sensitive=True)()


def test_a_task_that_takes_the_context_sees_its_own_result() -> None:
    from djsite_tasks import whoami

    result = whoami.enqueue()
    _run_until_finished(result.id)
    assert whoami.get_result(result.id).return_value == {
        "id": result.id, "attempt": 1, "status": "RUNNING",
    }  # fmt: skip


def test_run_after_schedules_the_job(sql: SQL) -> None:
    from django.tasks import TaskResultStatus
    from django.tasks.exceptions import InvalidTask
    from djsite_tasks import add

    when = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    result = add.using(run_after=when).enqueue(1, 1)
    assert sql("SELECT state, scheduled_at FROM oban_jobs WHERE id = %s", [int(result.id)]) == [
        ("scheduled", when.replace(tzinfo=None))
    ]
    got = add.get_result(result.id)
    assert (got.status, got.task.run_after) == (TaskResultStatus.READY, when)
    with pytest.raises(InvalidTask, match="aware"):
        add.using(run_after=datetime(2030, 1, 1)).enqueue(1, 1)


def test_a_task_enqueued_in_a_rolled_back_block_never_exists(sql: SQL) -> None:
    from django.db import transaction
    from djsite_tasks import add

    with pytest.raises(RuntimeError, match="boom"), transaction.atomic():
        result = add.enqueue(1, 2)
        raise RuntimeError("boom")
    assert sql("SELECT count(*) FROM oban_jobs WHERE id = %s", [int(result.id)]) == [(0,)]


def test_unknown_and_foreign_results_do_not_exist() -> None:
    from django.tasks import default_task_backend
    from django.tasks.exceptions import TaskResultDoesNotExist, TaskResultMismatch
    from djsite_tasks import add, shout
    from orders.workers import send_confirmation

    from kerrera.contrib.django import get_app

    plain = get_app().sync.insert(send_confirmation.new({"order_id": 1}))
    for result_id in ("nope", "999999", str(plain.id)):
        with pytest.raises(TaskResultDoesNotExist):
            default_task_backend.get_result(result_id)
    with pytest.raises(TaskResultMismatch):
        shout.get_result(add.enqueue(1, 2).id)


def test_manage_py_kerrera_start_imports_and_runs_django_tasks(dsn: str, prefix: str) -> None:
    # The node meets jobs named `djsite_tasks.add` and `.fail` before anything imported
    # that module there: importing it builds the Tasks, which registers their workers.
    from django.tasks import TaskResultStatus
    from djsite import Started, example_env
    from djsite_tasks import add, fail

    ok, bad = add.enqueue(2, 40), fail.enqueue("in a subprocess")
    here = str(Path(__file__).resolve().parent)
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)
    env = example_env(dsn, prefix, DJANGO_SETTINGS_MODULE="djsite_settings", PYTHONPATH=path)
    node = Started(env, "kerrera", "start", "--queues", "default:2", "--node", "tasks-node")
    try:
        until(lambda: add.get_result(ok.id).is_finished and fail.get_result(bad.id).is_finished,
              timeout=60)  # fmt: skip
    finally:
        code = node.stop()
    assert code == 0, "\n".join(node.lines)
    done, failed = add.get_result(ok.id), fail.get_result(bad.id)
    assert (done.status, done.return_value, done.worker_ids) == (
        TaskResultStatus.SUCCESSFUL, 42, ["tasks-node"],
    )  # fmt: skip
    assert failed.status == TaskResultStatus.FAILED
    assert failed.errors[0].exception_class is LookupError


def test_bad_options_and_queue_names_are_clear_errors() -> None:
    from django.core.exceptions import ImproperlyConfigured
    from django.tasks.exceptions import InvalidTask
    from djsite_tasks import add

    from kerrera.contrib.django.tasks import KerreraBackend, job_priority

    with pytest.raises(ImproperlyConfigured, match="unknown option 'max_attempt'"):
        KerreraBackend("x", {"OPTIONS": {"max_attempt": 3}})
    with pytest.raises(ImproperlyConfigured, match="option 'max_attempts'"):
        KerreraBackend("x", {"OPTIONS": {"max_attempts": 0}})
    with pytest.raises(InvalidTask, match="option 'queue_name' must be a non-empty string"):
        add.using(queue_name=" ", backend="patient")
    with pytest.raises(InvalidTask, match="not valid for backend"):
        add.using(queue_name="nosuch")
    priorities = [job_priority(p) for p in range(-100, 101)]
    assert (priorities[0], priorities[100], priorities[-1]) == (9, 4, 0)
    assert priorities == sorted(priorities, reverse=True)
