"""Workers for the workflow tests: each records its run in the database (so separate
node processes can be checked too) and can be told to fail, snooze or block."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import psycopg

from kerrera import Job, worker
from kerrera.core.outcomes import Cancel, Record, Snooze


def _log(job: Job, event: str) -> None:
    dsn = os.environ.get("KERRERA_FLOWS_DSN")
    if not dsn:
        return
    prefix = job.meta.get("test_prefix") or os.environ.get("KERRERA_FLOWS_PREFIX", "public")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f'INSERT INTO "{prefix}".flow_log (job_id, name, event) VALUES (%s, %s, %s)',
            (job.id, job.meta.get("name"), event),
        )


@worker(queue="flows", max_attempts=3)
async def step(job: Job) -> Any:
    """Records start and end; `args`: fail_until (attempt), snooze_first, cancel, sleep,
    value (recorded)."""
    await asyncio.to_thread(_log, job, "start")
    a = job.args
    if a.get("sleep"):
        await asyncio.sleep(float(a["sleep"]))
    if a.get("snooze_first") and job.attempt == 1:
        await asyncio.to_thread(_log, job, "snooze")
        return Snooze(0.1)
    if a.get("cancel"):
        return Cancel("told to")
    if job.attempt <= int(a.get("fail_until", 0)):
        await asyncio.to_thread(_log, job, "fail")
        raise RuntimeError(f"failing attempt {job.attempt}")
    if a.get("discard"):
        await asyncio.to_thread(_log, job, "fail")
        raise RuntimeError("always fails")
    await asyncio.to_thread(_log, job, "end")
    if "value" in a:
        return Record(a["value"])
    return None


@worker(queue="flows", max_attempts=3)
async def reader(job: Job) -> Any:
    """Records what it reads of its workflow: the context and its deps' results."""
    await asyncio.to_thread(_log, job, "start")
    assert job.workflow is not None
    context = await job.workflow.context()
    results = await job.workflow.results()
    await asyncio.to_thread(_log, job, "end")
    return Record({"context": context, "results": results})


@worker(queue="flows", max_attempts=3)
async def grafter(job: Job) -> Any:
    """Grafts `n` steps (each records `value` i) onto its workflow."""
    await asyncio.to_thread(_log, job, "start")
    assert job.workflow is not None
    n = int(job.args["n"])
    await job.workflow.graft([step.new({"value": i}) for i in range(n)])
    await asyncio.to_thread(_log, job, "end")
    return None


def total(context: dict[str, Any], results: dict[str, Any]) -> int:
    """A cascade: the sum of its dependencies' results plus context['base']."""
    return int(context.get("base", 0)) + sum(int(v) for v in results.values())


@worker(queue="flows", max_attempts=3)
async def noop(job: Job) -> None:
    """Does nothing (for large workflows, where logging each run would dominate)."""
    return None


@worker(queue="flows", max_attempts=3)
def sync_reader(job: Job) -> Any:
    """A sync worker reading its workflow through the `_sync` methods."""
    assert job.workflow is not None
    _log(job, "start")
    context = job.workflow.context_sync()
    results = job.workflow.results_sync()
    return Record({"context": context, "results": results})
