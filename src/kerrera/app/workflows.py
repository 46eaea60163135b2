"""Workflows seen from the application: inserting one, and `app.workflow(id)`, the
handle that reads, waits for, cancels and retries it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from kerrera.core.errors import ConfigError
from kerrera.core.job import UNFINISHED, Job, JobState
from kerrera.core.workflow import WorkflowStep, check_step_name, members
from kerrera.engine.postgres import PostgresEngine

#: How often `wait()` looks, at most and at first (it backs off to the most).
WAIT_POLL = (0.02, 1.0)


@dataclass(frozen=True, slots=True)
class WorkflowStatus:
    """A workflow's steps per state, and how long it has run (or ran)."""

    id: str
    name: str | None
    states: dict[str, int]
    total: int
    inserted_at: datetime | None
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        """True once no step is waiting, scheduled, available, running or retryable."""
        return self.total > 0 and not any(self.states.get(s, 0) for s in UNFINISHED)

    @property
    def duration(self) -> float | None:
        """Seconds from its insert to its last step's end (None while it runs)."""
        if not self.finished or self.inserted_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.inserted_at).total_seconds()

    @property
    def state(self) -> str:
        """`executing` while it runs; when finished, `completed` if every step completed,
        else `cancelled` or `discarded` (the worst among its steps)."""
        if not self.finished:
            return "executing"
        for worst in ("discarded", "cancelled"):
            if self.states.get(worst):
                return worst
        return "completed"


class WorkflowHandle:
    """One workflow by id (`app.workflow(id)`)."""

    def __init__(self, engine: Callable[[], Awaitable[PostgresEngine]], workflow_id: str) -> None:
        if not isinstance(workflow_id, str) or not workflow_id:
            raise ConfigError(f"a workflow id is a non-empty string, got {workflow_id!r}")
        self._open = engine
        self.id = workflow_id

    async def _engine(self) -> PostgresEngine:
        return await self._open()

    async def context(self) -> dict[str, Any]:
        """Its context (`Workflow.put_context`)."""
        row = await (await self._engine()).workflow_row(self.id)
        if row is None:
            raise ConfigError(f"no workflow with id {self.id!r}")
        return dict(row[1])

    async def status(self) -> WorkflowStatus:
        """Its steps per state, total, and start and end."""
        engine = await self._engine()
        row = await engine.workflow_row(self.id, context=False)
        if row is None:
            raise ConfigError(f"no workflow with id {self.id!r}")
        rows = await engine.workflow_status(self.id)
        states = {state: n for state, n, _first, _last in rows}
        firsts = [first for _s, _n, first, _l in rows if first is not None]
        lasts = [last for _s, _n, _f, last in rows if last is not None]
        return WorkflowStatus(
            id=self.id, name=row[0], states=states, total=sum(states.values()),
            inserted_at=row[2] if not firsts else min(row[2], *firsts),
            finished_at=max(lasts) if lasts else None,
        )  # fmt: skip

    async def jobs(
        self, names: Sequence[str] | None = None, *, only_deps: str | None = None
    ) -> list[Job]:
        """Its steps in insertion order: all, those named (a group or sub-workflow name
        gives its members), or with `only_deps=step`, the jobs that step depends on."""
        engine = await self._engine()
        if only_deps is not None:
            step = [j for j in await engine.workflow_jobs(self.id, [only_deps])
                    if j.meta.get("name") == only_deps]  # fmt: skip
            if not step:
                raise ConfigError(f"workflow {self.id!r} has no step named {only_deps!r}")
            names = list(step[0].meta.get("deps") or [])
            if not names:
                return []
        if isinstance(names, str):
            names = [names]
        return list(await engine.workflow_jobs(self.id, names))

    async def results(self, names: Sequence[str]) -> dict[str, Any]:
        """The recorded results (`Record(value)`) of the steps counting toward `names`,
        by step name; steps that recorded nothing are left out."""
        if not names:
            return {}
        out: dict[str, Any] = {}
        for job in await self.jobs(list(names)):
            if job.meta.get("recorded"):
                out[str(job.meta.get("name"))] = job.meta.get("return")
        return out

    async def wait(self, timeout: float | None = None) -> WorkflowStatus:
        """Return its status once every step has finished; `TimeoutError` after
        `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        delay, most = WAIT_POLL
        while True:
            status = await self.status()
            if status.finished:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"workflow {self.id} did not finish within {timeout} s")
            pause = delay if deadline is None else min(delay, max(deadline - time.monotonic(), 0))
            await asyncio.sleep(pause)
            delay = min(delay * 1.5, most)

    async def cancel(self) -> list[Job]:
        """Cancel every step that has not finished (running ones are asked to stop);
        returns the cancelled jobs."""
        jobs = await self.jobs()
        ids = [j.id for j in jobs if j.id is not None and not j.state.terminal]
        if not ids:
            return []
        return list(await (await self._engine()).cancel_jobs(ids))

    async def retry(self, args: Mapping[str, Mapping[str, Any]] | None = None) -> list[int]:
        """Run the cancelled and discarded steps again, and every step after them that
        has not completed; `args` gives new args by step name. Returns their ids."""
        edits = {str(k): dict(v) for k, v in (args or {}).items()}
        return list(await (await self._engine()).retry_workflow(self.id, edits))

    async def graft(self, step: WorkflowStep, jobs: Sequence[Job] | Mapping[str, Job]) -> list[Job]:
        """Add `jobs` for the running graft step `step` (see `WorkflowStep.graft`)."""
        engine = await self._engine()
        built_from = members(jobs)
        current = await engine.workflow_jobs(self.id, [step.step])
        mine = [j for j in current if j.id == step.job_id]
        if not mine or not mine[0].meta.get("graft"):
            raise ConfigError(f"step {step.step!r} is not a graft step (use add_graft)")
        if mine[0].state is not JobState.EXECUTING:
            raise ConfigError(
                f"graft step {step.step!r} grafts while it runs, not when {mine[0].state}"
            )
        names = list(step.announces)
        built = []
        for key, job in built_from:
            if not isinstance(job, Job) or job.id is not None or job.unique is not None:
                raise ConfigError("graft takes unsaved, non-unique jobs (Worker.new())")
            member = f"{step.step}.{check_step_name(key, 'graft key')}"
            meta = {
                **job.meta, "workflow_id": self.id, "name": member, "deps": [],
                "announces": [member, *names],
            }  # fmt: skip
            if step.name is not None:
                meta["workflow_name"] = step.name
            built.append(_with_meta(job, meta))
        grafted = list(await engine.graft_workflow(self.id, step.step, names, built))
        if grafted:
            return grafted
        # grafted before (a retried graft step): the jobs of that first graft
        prefix = f"{step.step}."
        return [j for j in await engine.workflow_jobs(self.id, [step.step])
                if str(j.meta.get("name", "")).startswith(prefix)]  # fmt: skip


def _with_meta(job: Job, meta: dict[str, Any]) -> Job:
    return replace(job, meta=meta)


def check_workflow_mode(testing_mode: str | None) -> None:
    """Workflows need the database's trigger: a testing mode cannot run them."""
    if testing_mode is not None:
        raise ConfigError(
            f"workflows run on a database: testing mode {testing_mode!r} cannot run them "
            "(use a real database in the test, e.g. the kerrera_app fixture)"
        )
