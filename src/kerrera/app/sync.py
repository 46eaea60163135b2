"""The synchronous face of a `Kerrera` instance: insert and manage jobs without a loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, overload

import psycopg

from kerrera.app.compose import check_batch
from kerrera.app.inspect import Names, by_queue, listing_filter, wait_target, wait_until_finished
from kerrera.app.workflows import check_workflow_mode
from kerrera.core.batch import Batch
from kerrera.core.errors import ConfigError
from kerrera.core.ids import as_ids, one_or_many
from kerrera.core.job import Job
from kerrera.core.options import check_jobs
from kerrera.core.worker import check_main_workers
from kerrera.core.workflow import Workflow
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

    @overload
    def insert(self, job: Job, *, conn: psycopg.Connection[Any] | None = None) -> Job: ...
    @overload
    def insert(
        self, job: Workflow | Batch, *, conn: psycopg.Connection[Any] | None = None
    ) -> list[Job]: ...
    def insert(
        self, job: Job | Workflow | Batch, *, conn: psycopg.Connection[Any] | None = None
    ) -> Job | list[Job]:
        """Insert one job, or a `Workflow` (on `conn`: inside the caller's transaction)."""
        if isinstance(job, Workflow | Batch):
            return self.insert_all(job, conn=conn)
        return self.insert_all([job], conn=conn)[0]

    def insert_all(
        self, jobs: Iterable[Job] | Workflow | Batch, *,
        conn: psycopg.Connection[Any] | None = None,
    ) -> list[Job]:  # fmt: skip
        """Insert many jobs, one statement per batch (a `Workflow`: one statement)."""
        if isinstance(jobs, Batch):  # its row and its jobs, in one transaction
            b = check_batch(jobs, self._app.testing_mode, self._app.config.queues)
            return self._open().insert_batch(b.batch_id, b.callbacks, b.open, b.jobs, conn)
        if isinstance(jobs, Workflow):
            check_workflow_mode(self._app.testing_mode)
            plan = jobs.plan()
            if self._app.testing_mode is None:
                check_main_workers(plan.jobs, self._app.config.queues)
            return self._open().insert_workflow(plan, conn)
        batch = check_jobs(jobs)
        if not batch:
            return []
        if self._app.testing_mode is None:  # a testing mode runs the jobs in this process
            check_main_workers(batch, self._app.config.queues)
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

    def wait(self, job: Job | int, timeout: float | None = None) -> Job:
        """Wait until `job` (a saved job or its id) has finished and return it, as
        `Kerrera.wait` does (`meta["return"]` holds a recorded result; `TimeoutError`
        after `timeout` seconds). It listens for the job's events on a connection of
        its own, in a thread with its own event loop, so it works from any thread,
        even one that runs an event loop.

        Example: `done = app.sync.wait(app.sync.insert(Report.new({"id": 7})), timeout=30)`.
        """
        job_id = wait_target(job, timeout)
        outcome: list[Job] = []
        failed: list[BaseException] = []

        def run() -> None:
            try:
                outcome.append(asyncio.run(self._wait(job_id, timeout)))
            except BaseException as exc:  # handed to the caller's thread
                failed.append(exc)

        thread = threading.Thread(target=run, name=f"kerrera-wait-{job_id}", daemon=True)
        thread.start()
        thread.join()
        if failed:
            raise failed[0]
        return outcome[0]

    async def _wait(self, job_id: int, timeout: float | None) -> Job:
        from kerrera.app.facade import Kerrera  # at run time: the facade imports this module

        config = self._app.config
        # A small app of the same database, on this thread's loop: the caller's app may
        # be bound to another loop, or to none.
        watcher = Kerrera(
            self._app.dsn, prefix=config.prefix, migrate=False, pool_size=2,
            notifier=config.notifier,
        )  # fmt: skip
        try:
            async with asyncio.timeout(timeout):
                return await wait_until_finished(watcher, job_id)
        finally:
            await watcher.stop()

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
