"""The worker that runs a workflow's cascade steps (`Workflow.add_cascade`)."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from kerrera.core.errors import ConfigError
from kerrera.core.job import Job
from kerrera.core.outcomes import Record
from kerrera.core.worker import Worker
from kerrera.core.workflow import call_cascade, resolve_function, step_of


class Cascade(Worker, name="kerrera.core.cascade.Cascade", max_attempts=20):
    """Calls the step's function with the workflow's context and its dependencies'
    recorded results, and records what it returns (so later cascades can read it)."""

    async def process(self, job: Job) -> Record:
        """Run the cascade function named in `args["fn"]`."""
        step = step_of(job)
        if step is None:
            raise ConfigError(f"job {job.id} is a cascade step without a workflow")
        fn = resolve_function(str(job.args["fn"]))
        context = await step.context()
        results = await step.results()
        if inspect.iscoroutinefunction(fn):
            value: Any = await call_cascade(fn, context, results)
        else:  # a plain function may block: keep it off the event loop
            value = await asyncio.to_thread(call_cascade, fn, context, results)
            if inspect.isawaitable(value):
                value = await value
        return Record(value)
