"""Workers that use Django's ORM: database connections looked after around each job.

Django checks its connections when a request starts and closes them when it ends
(`close_old_connections`), dropping broken ones and honouring `CONN_MAX_AGE`. A job is
not a request, so without this a connection that broke (a database restart, an idle
timeout) would fail every later job on the same worker thread.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async

from kerrera import worker as kerrera_worker
from kerrera.contrib.django._django import close_old_connections


def worker(func: Callable[..., Any] | None = None, **options: Any) -> Any:
    """`kerrera.worker` for code that uses Django's ORM: takes the same options
    (`queue`, `max_attempts`, `priority`, `tags`, `timeout`, `unique`, `args`, `name`)
    and runs Django's `close_old_connections()` before and after every job, as Django
    does around a request. The worker keeps the function's dotted name and signature.

    Example:
        from kerrera.contrib.django import worker

        @worker(queue="mail", max_attempts=5)
        def send_confirmation(job: Job) -> None:
            order = Order.objects.get(pk=job.args["order_id"])
            ...
    """

    def wrap(fn: Callable[..., Any]) -> Any:
        return kerrera_worker(_looking_after_connections(fn), **options)

    return wrap(func) if func is not None else wrap


def _looking_after_connections(fn: Callable[..., Any]) -> Callable[..., Any]:
    if not callable(fn):
        return fn  # kerrera.worker says what is wrong with it
    # Arguments pass through untouched: a worker may take `(job)` or `(job, args)`.
    if inspect.iscoroutinefunction(fn):
        # The async ORM runs queries on one shared thread; its connections live there.
        tidy = sync_to_async(close_old_connections, thread_sensitive=True)

        @functools.wraps(fn)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            await tidy()
            try:
                return await fn(*args, **kwargs)
            finally:
                await tidy()

        return run_async

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        close_old_connections()
        try:
            return fn(*args, **kwargs)
        finally:
            close_old_connections()

    return run
