"""The process's shared `Kerrera`, and inserting jobs on Django's own connection.

A job inserted here is written with Django's connection to the database named by
`KERRERA["database"]` ("default"), so inside `transaction.atomic()` it commits or rolls
back with the rest of the block: no `transaction.on_commit` is needed, and a worker can
never see a job whose data was rolled back.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import psycopg
from asgiref.sync import sync_to_async

from kerrera import Job, Kerrera
from kerrera.contrib.django._django import ImproperlyConfigured, connections
from kerrera.contrib.django.conf import KerreraSettings, build_app

_lock = threading.Lock()
_shared: Kerrera | None = None
_shared_dsn: str | None = None


def get_app() -> Kerrera:
    """The `Kerrera` of this process, built from settings when first asked for.

    The same instance is returned until the database it points at changes (Django's
    test runner switching to `test_<NAME>`), the settings are overridden, or
    `reset_app()` is called. In a process started by `manage.py kerrera start` it is the
    running node (see `set_app`).

    Example:
        job = get_app().sync.get_job(job_id)
    """
    global _shared, _shared_dsn
    with _lock:
        if _shared is not None and _shared_dsn is None:
            return _shared  # installed with set_app: kept whatever the settings say
        dsn = KerreraSettings.load().dsn()
        if _shared is None or _shared_dsn != dsn:
            stale, _shared = _shared, build_app(dsn=dsn)
            _shared_dsn = dsn
            if stale is not None:
                stale.sync.close()
        return _shared


def reset_app() -> None:
    """Forget the shared instance and close its connections; the next `get_app()` builds
    a new one from settings. Settings changed by `override_settings` do this already.

    Example (a test that swaps the database under Kerrera):
        reset_app()
    """
    set_app(None)


def set_app(app: Kerrera | None) -> None:
    """Make `app` the shared instance until `reset_app()`, whatever the settings say
    (`manage.py kerrera start` installs its node, so jobs that insert jobs reuse it).

    Example:
        node = build_app(queues={"default": 5})
        set_app(node)
    """
    global _shared, _shared_dsn
    with _lock:
        stale, _shared = _shared, app
        _shared_dsn = None
    if stale is not None and stale is not app:
        stale.sync.close()


def insert(job: Job) -> Job:
    """Insert `job` on Django's connection: inside `transaction.atomic()` it commits or
    rolls back with the block; outside one it is committed at once (autocommit).

    Example:
        with transaction.atomic():
            order = Order.objects.create(item="tea")
            insert(send_confirmation.new({"order_id": order.pk}))
    """
    return insert_all([job])[0]


def insert_all(jobs: Iterable[Job]) -> list[Job]:
    """Insert many jobs in one statement on Django's connection (see `insert`).

    Example:
        insert_all(send_reminder.new({"user": u.pk}) for u in users)
    """
    app = get_app()
    alias = KerreraSettings.load().database
    wrapper = connections[alias]
    raw = _raw_connection(alias)
    # Django's own error classes (IntegrityError, ...), as for any query it runs.
    with wrapper.wrap_database_errors:
        return app.sync.insert_all(jobs, conn=raw)


async def ainsert(job: Job) -> Job:
    """`insert` for async views: runs on the thread that holds Django's connection.

    Example:
        async def order_view(request):
            job = await ainsert(send_confirmation.new({"order_id": 7}))
    """
    return (await ainsert_all([job]))[0]


async def ainsert_all(jobs: Iterable[Job]) -> list[Job]:
    """`insert_all` for async code (see `ainsert`).

    Example:
        await ainsert_all(send_reminder.new({"user": pk}) for pk in user_ids)
    """
    batch = list(jobs)
    # Django's connections belong to threads; this is the thread its async ORM uses.
    saved: list[Job] = await sync_to_async(insert_all, thread_sensitive=True)(batch)
    return saved


def _raw_connection(alias: str) -> psycopg.Connection[Any]:
    wrapper = connections[alias]
    wrapper.ensure_connection()  # refuses an async context: see ainsert
    # Like any Django query: no statement after an error in an atomic block.
    wrapper.validate_no_broken_transaction()
    raw = wrapper.connection
    if not isinstance(raw, psycopg.Connection):
        raise ImproperlyConfigured(
            f"settings.DATABASES[{alias!r}]: Kerrera inserts jobs on Django's connection "
            f"and needs psycopg 3, but Django is using {type(raw).__module__.split('.')[0]} "
            "(install 'psycopg' and remove psycopg2; Django >= 4.2 then uses psycopg 3)"
        )
    return raw
