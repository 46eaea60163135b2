"""The synchronous face of a `Kerrera` instance: insert and manage jobs without a loop."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from kerrera.app.inspect import Names, by_queue, listing_filter
from kerrera.core.errors import ConfigError
from kerrera.core.ids import as_ids, one_or_many
from kerrera.core.job import Job
from kerrera.core.options import check_jobs
from kerrera.engine.schema import check_schema, migrate_sync
from kerrera.engine.sync import SyncPostgresEngine
from kerrera.events.inserts import inserts_watched, observe_insert
from kerrera.notifier import Notifier, is_transactional
from kerrera.queue.control import queue_command

if TYPE_CHECKING:
    from kerrera.app.facade import Kerrera


class SyncKerrera:
    """`app.sync`: for Django, Flask and scripts. Pass `conn=` (a psycopg `Connection`)
    to insert inside your own transaction.

    Example:
        with psycopg.connect(dsn) as conn:   # one transaction
            conn.execute("INSERT INTO orders ...")
            app.sync.insert(SendReceipt.new({"order": 7}), conn=conn)
    """

    def __init__(self, app: Kerrera) -> None:
        self._app = app
        self._engine: SyncPostgresEngine | None = None
        self._lock = threading.Lock()

    def _open(self) -> SyncPostgresEngine:
        with self._lock:
            return self._open_locked()

    def _open_locked(self) -> SyncPostgresEngine:
        if self._engine is None:
            dsn, prefix = self._app.dsn, self._app.config.prefix
            if self._app.config.migrate:
                migrate_sync(dsn, prefix)
            else:
                check_schema(dsn, prefix)
            # An in-process notifier is the app's (made when its async side opens): found
            # at each delivery, since the app makes a new one each time it opens.
            local = None if is_transactional(self._app.config.notifier) else self._app_notifier
            self._engine = SyncPostgresEngine(dsn, prefix, notifier=local)
        return self._engine

    def _app_notifier(self) -> Notifier | None:
        return self._app._notifier

    def close(self) -> None:
        """Close the connections this sync face holds (it reopens them when used again)."""
        if self._engine is not None:
            self._engine.close()

    def migrate(self) -> list[int]:
        """Bring the schema up to date; return the versions applied."""
        return migrate_sync(self._app.dsn, self._app.config.prefix)

    def insert(self, job: Job, *, conn: psycopg.Connection[Any] | None = None) -> Job:
        """Insert one job (on `conn`: inside the caller's transaction)."""
        return self.insert_all([job], conn=conn)[0]

    def insert_all(
        self, jobs: Iterable[Job], *, conn: psycopg.Connection[Any] | None = None
    ) -> list[Job]:
        """Insert many jobs, one statement per batch."""
        batch = check_jobs(jobs)
        if not batch:
            return []
        if self._app.testing_mode == "inline":
            from kerrera.queue.inline import insert_inline_sync

            return insert_inline_sync(self._app, batch, conn)
        if not inserts_watched():
            return self._open().insert_jobs(batch, conn)
        with observe_insert(batch) as done:
            return done(self._open().insert_jobs(batch, conn))

    def complete_job(self, job: Job, *, conn: psycopg.Connection[Any]) -> bool:
        """Mark the running `job` completed inside the caller's transaction (see
        `Kerrera.complete_job`); False when this attempt no longer owns the job."""
        if job.id is None:
            raise ConfigError("complete_job needs a saved, running job")
        return self._open().complete_job(job.id, job.attempt, conn, job.owner)

    def get_job(self, job_id: int) -> Job | None:
        """The job with this id, or None."""
        found = self._open().get_jobs([job_id])
        return found[0] if found else None

    def list_jobs(
        self, *, state: Names = None, queue: Names = None, worker: Names = None,
        limit: int = 50, before_id: int | None = None,
    ) -> list[Job]:  # fmt: skip
        """Jobs matching every filter, newest first (see `Kerrera.list_jobs`).

        Example: `failed = app.sync.list_jobs(state="discarded", queue="mail")`.
        """
        where = listing_filter(state, queue, worker, limit, before_id)
        return self._open().list_jobs(where, limit, before_id)

    def count_jobs(self) -> dict[str, dict[str, int]]:
        """Unfinished jobs per queue and state (see `Kerrera.count_jobs`)."""
        return by_queue(self._open().count_jobs())

    def retry_job(self, ids: int | Sequence[int]) -> Job | list[Job] | None:
        """Make jobs that are not executing available now."""
        return one_or_many(ids, self._open().retry_jobs(as_ids(ids)))

    def cancel_job(self, ids: int | Sequence[int]) -> Job | list[Job] | None:
        """Cancel unfinished jobs."""
        return one_or_many(ids, self._open().cancel_jobs(as_ids(ids)))

    def delete_job(self, ids: int | Sequence[int]) -> Job | list[Job] | None:
        """Delete jobs that are not executing."""
        return one_or_many(ids, self._open().delete_jobs(as_ids(ids)))

    def pause_queue(self, queue: str, *, node: str | None = None) -> None:
        """Pause `queue` on every node (or `node`), persisted (see `Kerrera.pause_queue`)."""
        self._queue_command("pause", queue, node)

    def resume_queue(self, queue: str, *, node: str | None = None) -> None:
        """Resume `queue` on every node (or `node`)."""
        self._queue_command("resume", queue, node)

    def scale_queue(self, queue: str, limit: int, *, node: str | None = None) -> None:
        """Set the per-node limit of `queue` on every node (or `node`), persisted."""
        self._queue_command("scale", queue, node, limit)

    def start_queue(self, queue: str, limit: int, *, node: str | None = None) -> None:
        """Start `queue` on every Kerrera node (or `node`), persisted."""
        self._queue_command("start", queue, node, limit)

    def stop_queue(self, queue: str, *, node: str | None = None) -> None:
        """Stop `queue` on every node (or `node`), persisted."""
        self._queue_command("stop", queue, node)

    def _queue_command(
        self, action: str, queue: str, node: str | None, limit: int | None = None
    ) -> None:
        changes, payload = queue_command(action, queue, node, limit)
        self._open().set_queue_state(queue, node or "", changes, payload)
