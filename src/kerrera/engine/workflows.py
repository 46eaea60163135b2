"""Workflow operations, as steps for both engines (see steps.py): inserting a workflow,
grafting steps onto it, reading it, and running its failed steps again.

Releasing a step is not here: the trigger of migration 6 does it in the transaction
that finishes the step's last dependency."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from psycopg.errors import UniqueViolation
from psycopg.rows import tuple_row

from kerrera.core import codec
from kerrera.core.errors import ConfigError
from kerrera.core.job import Job, JobState
from kerrera.core.workflow import WorkflowPlan
from kerrera.engine.statements import insert_messages, queue_messages, saved_jobs
from kerrera.engine.steps import Atomic, HandOver, Query, Route, Steps

#: States of a step that ended without completing: a workflow retry runs them again.
_FAILED = {JobState.CANCELLED, JobState.DISCARDED}


def _rows(jobs: Sequence[Job], extra: list[dict[str, Any]] | None = None) -> str:
    rows = []
    for i, j in enumerate(jobs):
        row = {
            "queue": j.queue, "worker": j.worker, "args": j.args, "meta": j.meta,
            "tags": j.tags, "priority": j.priority, "max_attempts": j.max_attempts,
            "at": None if j.scheduled_at is None else j.scheduled_at.isoformat(),
            "delay": j.schedule_in,
        }  # fmt: skip
        if extra is not None:
            row.update(extra[i])
        rows.append(row)
    return codec.dumps(rows)


def insert_workflow(plan: WorkflowPlan, route: Route) -> Steps[list[Job]]:
    """Insert the workflow row and its steps (one statement); return the saved jobs."""
    extra = [
        {"pending": p, "deps": d, "ignore": i}
        for p, d, i in zip(plan.pending, plan.deps, plan.ignore, strict=True)
    ]
    params = {
        "id": plan.workflow_id, "name": plan.name, "context": codec.dumps(plan.context),
        "jobs": _rows(plan.jobs, extra), "channel": route.param,
    }  # fmt: skip
    try:
        rows = yield Query("insert_workflow", params, tuple_row)
    except UniqueViolation as exc:
        if exc.diag.constraint_name != "kerrera_workflows_pkey":
            raise
        raise ConfigError(
            f"option 'workflow_id': a workflow with id {plan.workflow_id!r} exists already "
            "(nothing was inserted)"
        ) from None
    saved = saved_jobs(plan.jobs, rows)
    if not route.in_statement:
        yield HandOver(route.channel, insert_messages(saved))
    return saved


def graft(
    workflow_id: str, step: str, names: Sequence[str], jobs: Sequence[Job], route: Route
) -> Steps[list[Job]]:
    """Add `jobs` to the workflow for the graft step `step` (which counts toward
    `names`); nothing when it grafted before."""
    params = {
        "id": workflow_id, "step": step, "names": list(names), "jobs": _rows(jobs),
        "channel": route.param,
    }  # fmt: skip
    rows = yield Query("graft_workflow", params, tuple_row)
    if not rows:
        return []
    saved = saved_jobs(list(jobs), rows)
    if not route.in_statement:
        yield HandOver(route.channel, insert_messages(saved))
    return saved


def workflow_row(
    workflow_id: str, context: bool = True
) -> Steps[tuple[str | None, dict[str, Any], datetime] | None]:
    """(name, context, inserted_at) of a workflow, or None when there is no such id;
    the context is `{}` unless asked for."""
    rows = yield Query("workflow_row", {"id": workflow_id, "context": context}, tuple_row)
    if not rows:
        return None
    _id, name, stored, inserted_at = rows[0]
    return name, codec.loads(stored), inserted_at


def workflow_status(workflow_id: str) -> Steps[list[tuple[str, int, Any, Any]]]:
    """(state, count, first inserted_at, last finished_at) per state of its steps."""
    rows: list[tuple[str, int, Any, Any]] = yield Query(
        "workflow_status", {"id": workflow_id}, tuple_row
    )
    return rows


def workflow_jobs(workflow_id: str, names: Sequence[str] | None) -> Steps[list[Job]]:
    """Its steps in insertion order (with `names`: those counting toward one)."""
    params = {"id": workflow_id, "names": None if names is None else list(names)}
    jobs: list[Job] = yield Query("workflow_jobs", params)
    return jobs


def workflow_list(limit: int) -> Steps[list[tuple[str, str | None, datetime, dict[str, int]]]]:
    """The newest workflows: (id, name, inserted_at, steps per state)."""
    rows = yield Query("workflow_list", {"limit": limit}, tuple_row)
    return [(i, n, at, codec.loads(states)) for i, n, at, states in rows]


def retry_workflow(
    workflow_id: str, args: Mapping[str, Mapping[str, Any]], route: Route
) -> Steps[list[int]]:
    """Run the failed and cancelled steps again, with what depends on them; `args` maps
    step names to new args. Returns the ids of the steps that will run again."""
    ids: list[int] = yield Atomic(_retry_steps(workflow_id, args, route))
    return ids


def _retry_steps(
    workflow_id: str, args: Mapping[str, Mapping[str, Any]], route: Route
) -> Steps[list[int]]:
    locked = yield Query("workflow_lock", {"id": workflow_id}, tuple_row)
    if not locked:
        raise ConfigError(f"no workflow with id {workflow_id!r}")
    steps: list[Job] = yield Query("workflow_jobs_locked", {"id": workflow_id})
    unknown = set(args) - {str(j.meta.get("name")) for j in steps}
    if unknown:
        raise ConfigError(f"workflow {workflow_id!r} has no step named {sorted(unknown)}")
    plan = plan_retry(steps)
    skipped = set(args) - {str(job.meta.get("name")) for job, _pending in plan}
    if skipped:
        raise ConfigError(
            f"retry args for {sorted(skipped)}: those steps will not run again (only the "
            "cancelled and discarded steps and the steps after them do)"
        )
    if not plan:
        return []
    rows = [
        {"id": job.id, "pending": pending, "ignore": _ignored(job),
         "args": args.get(str(job.meta.get("name")))}
        for job, pending in plan
    ]  # fmt: skip
    params = {"id": workflow_id, "steps": codec.dumps(rows), "channel": route.param}
    yield Query("workflow_reset_mark", {}, tuple_row)
    reset = yield Query("workflow_reset", params, tuple_row)
    if not route.in_statement:
        yield HandOver(route.channel, queue_messages(q for _id, s, q in reset if s == "available"))
    return [row[0] for row in reset]


def _ignored(job: Job) -> list[str]:
    return [o for o in ("cancelled", "discarded", "deleted") if job.meta.get(f"ignore_{o}")]


def plan_retry(steps: Sequence[Job]) -> list[tuple[Job, int]]:
    """Which steps a workflow retry runs again, each with the number of dependency jobs
    it must wait for: every cancelled or discarded step, and every step that depends on
    one of them, directly or not, and has not completed."""
    announcers: dict[str, list[Job]] = {}
    for job in steps:
        for name in job.meta.get("announces") or [job.meta.get("name")]:
            announcers.setdefault(str(name), []).append(job)
    again: set[int] = {j.id for j in steps if j.id is not None and j.state in _FAILED}
    if not again:
        return []
    changed = True
    while changed:  # close over dependents (the graph is small: an operator's action)
        changed = False
        for job in steps:
            if job.id in again or job.state is JobState.COMPLETED or job.id is None:
                continue
            if any(d.id in again for dep in job.meta.get("deps") or []
                   for d in announcers.get(str(dep), [])):  # fmt: skip
                again.add(job.id)
                changed = True
    out = []
    for job in steps:
        if job.id not in again:
            continue
        gone = [str(dep) for dep in job.meta.get("deps") or [] if not announcers.get(str(dep))]
        if gone:
            raise ConfigError(
                f"step {job.meta.get('name')!r} depends on {gone}, whose jobs are gone "
                "(pruned?): retrying it would run it without them"
            )
        pending = sum(
            1
            for dep in job.meta.get("deps") or []
            for d in announcers.get(str(dep), [])
            if d.id in again or d.state is not JobState.COMPLETED
        )
        out.append((job, pending))
    return out
