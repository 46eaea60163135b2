"""Running jobs in the caller: inline inserts and `drain_queue`.

Jobs are claimed with the same transition a fetch makes (executing, attempt + 1), run by
the node's executor, and their outcomes written with the runtime's own guarded ack
statement, so rows end exactly as they would on a node.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from kerrera.core.context import CURRENT_APP
from kerrera.core.errors import ConfigError
from kerrera.core.job import Job, RunningJob
from kerrera.engine.base import AckBatch
from kerrera.queue.executor import Executor
from kerrera.queue.observed import outcome_state
from kerrera.queue.recording import RecordingProgress
from kerrera.queue.threads import DaemonThreadPool

if TYPE_CHECKING:
    from kerrera.app.facade import Kerrera

#: `attempted_by[1]` of jobs run in the caller (the node name is `attempted_by[0]`).
CALLER = "inline"
#: `drain_queue(with_recursion=True)` gives up after this many rounds (a job that always
#: snoozes would otherwise drain forever).
MAX_ROUNDS = 1000
OUTCOMES = ("completed", "retryable", "discarded", "cancelled", "snoozed")


class Runner:
    """Runs claimed jobs one by one for one app."""

    def __init__(self, app: Kerrera) -> None:
        self._app = app
        self._threads = DaemonThreadPool(4, name="kerrera-inline")
        self._executor = Executor(self._threads, app.node)

    def close(self) -> None:
        """Let the runner's idle threads end (the app is stopping)."""
        self._threads.shutdown()

    async def run(
        self, jobs: list[RunningJob], *, conn: Any = None, record_progress: bool = False,
        safety: bool = True,
    ) -> dict[str, int]:  # fmt: skip
        """Run `jobs` in order and write each outcome (on `conn` when given); return
        counts by outcome. Without `safety`, a job's exception is raised after its
        outcome is written."""
        counts = dict.fromkeys(OUTCOMES, 0)
        engine = await self._app._open()
        token = CURRENT_APP.set(self._app)  # current_app() inside the job is this app
        try:
            for i, job in enumerate(jobs):
                if record_progress:
                    job.progress_state = RecordingProgress(job)
                ack, error = await self._executor.execute(job)
                await engine.ack_jobs(one_ack(job, ack), conn)
                counts[outcome_state(ack)] += 1
                if error is not None and not safety:
                    await release(engine, jobs[i + 1 :])  # claimed, never run: put back
                    raise error
        finally:
            CURRENT_APP.reset(token)
        return counts

    async def insert_inline(self, batch: list[Job], conn: Any) -> list[Job]:
        """Insert `batch`, run every new job at once, return the rows as they ended."""
        engine = await self._app._open()
        saved, claimed = await engine.insert_claimed(batch, self._app.node, CALLER, conn)
        # Progress writes would wait for the caller's transaction (the row is locked in
        # it): keep them in memory then.
        await self.run(claimed, conn=conn, record_progress=conn is not None)
        ran = [job.id for job in claimed]
        final = {j.id: j for j in await engine.get_jobs(ran, conn)} if ran else {}
        return ended(saved, claimed, final)

    async def drain(
        self, queue: str, *, with_scheduled: bool, with_recursion: bool, with_safety: bool
    ) -> dict[str, int]:
        """Run the queue's available jobs (see `Kerrera.drain_queue`)."""
        engine = await self._app._open()
        counts = dict.fromkeys(OUTCOMES, 0)
        for _ in range(MAX_ROUNDS):
            if with_scheduled:
                await engine.stage_queue_now(queue)
            ids = await engine.available_ids(queue)
            if not ids:
                return counts
            claimed = await engine.claim_jobs(ids, self._app.node, CALLER)
            order = {job_id: i for i, job_id in enumerate(ids)}
            claimed.sort(key=lambda j: order[j.id])
            done = await self.run(claimed, safety=with_safety)
            for outcome, n in done.items():
                counts[outcome] += n
            if not with_recursion:
                return counts
            await asyncio.sleep(0)
        raise RuntimeError(
            f"drain_queue({queue!r}): jobs were still available after {MAX_ROUNDS} rounds "
            "(a job that always snoozes or re-inserts itself?)"
        )


def insert_inline_sync(app: Kerrera, batch: list[Job], conn: Any) -> list[Job]:
    """`app.sync.insert` in inline mode: insert, run each new job at once in this
    thread (on a private event loop), write its outcome, return the rows as they ended."""
    engine = app.sync._open()
    saved, claimed = engine.insert_claimed(batch, app.node, CALLER, conn)
    for job, ack in run_detached(app, claimed):
        engine.ack_jobs(one_ack(job, ack), conn)
    ran = [job.id for job in claimed]
    final = {j.id: j for j in engine.get_jobs(ran, conn)} if ran else {}
    return ended(saved, claimed, final)


async def release(engine: Any, jobs: list[RunningJob]) -> None:
    """Put claimed jobs that will not run now back to available (attempt not spent)."""
    if jobs:
        ids = [j.id for j in jobs]
        await engine.ack_jobs(
            AckBatch(released_ids=ids, released_attempts=[j.attempt for j in jobs], producer=CALLER)
        )


def one_ack(job: RunningJob, ack: dict[str, Any] | None) -> AckBatch:
    """The ack batch of one finished job (None: plainly completed)."""
    if ack is not None:
        return AckBatch(outcomes=[ack], producer=CALLER)
    return AckBatch(done_ids=[job.id], done_attempts=[job.attempt], producer=CALLER)


def ended(saved: list[Job], claimed: list[RunningJob], final: dict[int | None, Job]) -> list[Job]:
    """The inserted jobs as they ended (unrun ones, such as unique conflicts, as saved),
    with progress that was kept in memory copied in."""
    for job in claimed:
        row = final.get(job.id)
        if row is not None and "progress" in job.meta and "progress" not in row.meta:
            row.meta["progress"] = job.meta["progress"]
    return [final.get(j.id, j) for j in saved]


def run_detached(
    app: Kerrera, jobs: list[RunningJob]
) -> list[tuple[RunningJob, dict[str, Any] | None]]:
    """Run `jobs` through an executor on a private event loop (sync callers); progress
    is kept in memory. Connections the jobs open on that loop are closed with it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise ConfigError(
            "inline mode from sync code on a running event loop: use `await app.insert()`"
        )

    async def go() -> list[tuple[RunningJob, dict[str, Any] | None]]:
        had_engine = app._engine is not None
        threads = DaemonThreadPool(1, name="kerrera-inline")
        executor = Executor(threads, app.node)
        token = CURRENT_APP.set(app)
        try:
            out = []
            for job in jobs:
                job.progress_state = RecordingProgress(job)
                ack, _error = await executor.execute(job)
                out.append((job, ack))
            return out
        finally:
            threads.shutdown()
            CURRENT_APP.reset(token)
            if not had_engine and app._engine is not None:  # opened by a job on this loop
                await app._close_engine()

    return asyncio.run(go())
