"""Workers and cascade functions for the workflow edge-case tests (test_workflow_edges):
a graft step that fails after grafting, and cascades of each shape a user may write.
Like `support.flows`, runs are recorded in the test schema's `flow_log` table."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import psycopg

from kerrera import Job, Worker, worker
from kerrera.core.outcomes import Record
from support import flows


def record(job: Job, event: str) -> None:
    """Append (job id, step name, event) to the test schema's flow_log."""
    dsn = os.environ.get("KERRERA_FLOWS_DSN")
    if not dsn:
        return
    prefix = os.environ.get("KERRERA_FLOWS_PREFIX", "public")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f'INSERT INTO "{prefix}".flow_log (job_id, name, event) VALUES (%s, %s, %s)',
            (job.id, job.meta.get("name"), event),
        )


class GraftThenFail(Worker, queue="flows", max_attempts=3):
    """Grafts `n` steps on every attempt, logs what the graft returned as
    `grafted:<ids>`, and fails its first attempt after grafting (retried at once)."""

    async def process(self, job: Job) -> Any:
        """Graft, log, and fail the first attempt."""
        await asyncio.to_thread(record, job, "start")
        assert job.workflow is not None
        n = int(job.args["n"])
        got = await job.workflow.graft([flows.step.new({"value": i}) for i in range(n)])
        ids = ",".join(str(j.id) for j in got)
        await asyncio.to_thread(record, job, f"grafted:{ids}")
        if job.attempt == 1:
            raise RuntimeError("fails after grafting")
        await asyncio.to_thread(record, job, "end")
        return None

    def backoff(self, job: Job) -> float:
        """Retry at once: the test waits for the second attempt."""
        return 0.1


def sync_total(context: dict[str, Any], results: dict[str, Any]) -> int:
    """A sync cascade: context['base'] plus the sum of its dependencies' results."""
    return int(context.get("base", 0)) + sum(int(v) for v in results.values())


def only_context(context: dict[str, Any]) -> list[str]:
    """A one-parameter cascade: what it was given (documented as the context)."""
    return sorted(context)


@worker(queue="flows", max_attempts=3)
async def big_reader(job: Job) -> Any:
    """Reads the context and records its size and one key (not the whole of it)."""
    assert job.workflow is not None
    context = await job.workflow.context()
    return Record({"size": len(context["blob"]), "tail": context["blob"][-5:]})


@worker(queue="flows", max_attempts=3)
async def where_am_i(job: Job) -> Any:
    """Records whether the job sees a workflow (a plain job must see None)."""
    return Record({"workflow": None if job.workflow is None else job.workflow.id})
