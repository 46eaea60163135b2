"""The testing helpers for synchronous tests (`testing.sync.assert_enqueued(...)`), on
the app's sync face: no event loop needed."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kerrera.core.job import Job
from kerrera.testing._asserts import (
    SCHEDULE_DELTA,
    filters,
    missing,
    scheduled_near,
    target_app,
    unexpected,
)

if TYPE_CHECKING:
    from kerrera.app.facade import Kerrera
    from kerrera.testing._perform import Outcome


class SyncTesting:
    """Sync twins of `all_enqueued`, `assert_enqueued`, `refute_enqueued`,
    `perform_job` and `drain_queue`.

    Example (a Django or Flask test):
        app.sync.insert(Mailer.new({"to": "a@b.c"}))
        testing.sync.assert_enqueued(worker=Mailer, args={"to": "a@b.c"}, app=app)
    """

    def all_enqueued(
        self, *, worker: Any = None, queue: str | None = None, args: Any = None,
        meta: Mapping[str, Any] | None = None, tags: Sequence[str] | None = None,
        priority: int | None = None, scheduled_in: float | None = None,
        delta: float = SCHEDULE_DELTA, app: Kerrera | None = None,
    ) -> list[Job]:  # fmt: skip
        """Matching jobs waiting to run (see `kerrera.testing.all_enqueued`)."""
        engine = target_app(app).sync._open()
        jobs = engine.enqueued_jobs(**filters(worker, queue, args, meta, tags, priority))
        if scheduled_in is not None and jobs:
            jobs = scheduled_near(jobs, engine.db_now(), scheduled_in, delta)
        return jobs

    def assert_enqueued(
        self, *, worker: Any = None, queue: str | None = None, args: Any = None,
        meta: Mapping[str, Any] | None = None, tags: Sequence[str] | None = None,
        priority: int | None = None, scheduled_in: float | None = None,
        delta: float = SCHEDULE_DELTA, app: Kerrera | None = None,
    ) -> Job:  # fmt: skip
        """Fail unless a matching job is enqueued; return the first match."""
        found = self.all_enqueued(
            worker=worker, queue=queue, args=args, meta=meta, tags=tags, priority=priority,
            scheduled_in=scheduled_in, delta=delta, app=app,
        )  # fmt: skip
        if found:
            return found[0]
        near = self.all_enqueued(worker=worker, queue=queue, app=app) or self.all_enqueued(app=app)
        raise missing(filters(worker, queue, args, meta, tags, priority), scheduled_in, near)

    def refute_enqueued(
        self, *, worker: Any = None, queue: str | None = None, args: Any = None,
        meta: Mapping[str, Any] | None = None, tags: Sequence[str] | None = None,
        priority: int | None = None, scheduled_in: float | None = None,
        delta: float = SCHEDULE_DELTA, app: Kerrera | None = None,
    ) -> None:  # fmt: skip
        """Fail if a matching job is enqueued."""
        found = self.all_enqueued(
            worker=worker, queue=queue, args=args, meta=meta, tags=tags, priority=priority,
            scheduled_in=scheduled_in, delta=delta, app=app,
        )  # fmt: skip
        if found:
            raise unexpected(
                filters(worker, queue, args, meta, tags, priority), scheduled_in, found
            )

    def perform_job(self, worker: Any, args: Any = None, **opts: Any) -> Outcome:
        """`kerrera.testing.perform_job` on a private event loop."""
        from kerrera.testing._perform import perform_job

        return asyncio.run(perform_job(worker, args, **opts))

    def drain_queue(self, queue: str, *, app: Kerrera | None = None, **opts: Any) -> dict[str, int]:
        """`app.drain_queue(queue, ...)` on a private event loop; the connections it
        opens are closed with it."""
        target = target_app(app)

        async def drain() -> dict[str, int]:
            if target._engine is not None:
                raise RuntimeError(
                    "sync drain_queue: this app's async side is open on another event "
                    "loop; use `await app.drain_queue()` there"
                )
            try:
                return await target.drain_queue(queue, **opts)
            finally:
                await target._close_engine()

        return asyncio.run(drain())
