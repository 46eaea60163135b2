"""Django 6 tasks of the Django tests (imported once `TASKS` names KerreraBackend)."""

from __future__ import annotations

from typing import Any

from django.tasks import TaskContext, task


@task
def add(a: int, b: int) -> int:
    """Return the sum: the result comes back through `get_result`."""
    return a + b


@task(queue_name="mail", priority=50)
def shout(text: str, *, times: int = 1) -> dict[str, Any]:
    """Return JSON built from args and kwargs."""
    return {"text": text.upper() * times}


@task
def fail(reason: str) -> None:
    """Raise, so that the task ends FAILED."""
    raise LookupError(reason)


@task
async def add_later(a: int, b: int) -> int:
    """An async task: runs on the node's event loop."""
    return a + b


@task(takes_context=True)
def whoami(context: TaskContext) -> dict[str, Any]:
    """What the task sees of its own result while it runs."""
    return {"id": context.task_result.id, "attempt": context.attempt,
            "status": str(context.task_result.status)}  # fmt: skip
