"""Batches: a group of jobs tracked together, with callback jobs that fire once each.

`Batch(jobs, callbacks={...})` is inserted with `await app.insert(batch)` (or
`app.insert_batch`) in one transaction. Its jobs carry `meta["batch_id"]` (Oban Pro's
key); the database keeps the batch's counts and inserts each callback job in the
transaction of the ack that makes it due (see `kerrera.engine.migrations.compose`), so
a crash can neither lose nor double one. Callbacks, by name (Oban Pro's `batch_<name>`
is accepted too):

- `attempted`: every job has run at least once (its first run ended, whatever the
  outcome; a job cancelled before running counts too);
- `completed`: every job completed;
- `exhausted`: every job reached a final state (completed, cancelled or discarded);
- `cancelled`, `discarded`, `retryable`: the first job that became so.

A callback is given as a job built as usual (`Report.new({"kind": "daily"})`); when it
fires, its args gain `batch_id`, `callback` (the name) and `counts` (total, attempted,
completed, cancelled, discarded), and its meta `batch_id` and `callback`. A member's
meta gains `batch_ran` when its first run ends (so that it is counted once).

A batch is sealed when inserted, unless `open=True`: then jobs can be appended
(`await app.batch(batch_id).append(jobs)`) and `attempted`, `completed` and `exhausted`
wait until it is closed (`.close()`), since more jobs may still come.

Example:
    batch = Batch(
        [Bill.new({"account": a}) for a in accounts],
        callbacks={"completed": Report.new({"run": run}), "discarded": Alert.new({})},
    )
    await app.insert(batch)
"""

from __future__ import annotations

import difflib
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from kerrera.core.errors import ConfigError
from kerrera.core.job import Job

#: The meta key of a batch's jobs (as Oban Pro names it).
BATCH_ID = "batch_id"
#: Callback names, as the database trigger knows them.
CALLBACKS = ("attempted", "cancelled", "completed", "discarded", "exhausted", "retryable")
_ID_RE = re.compile(r"^[^\s]{1,200}$")


def check_batch_id(batch_id: object) -> str:
    """A batch id: 1-200 characters without spaces."""
    if not isinstance(batch_id, str) or not _ID_RE.match(batch_id):
        raise ConfigError(
            f"option 'batch_id' must be 1-200 characters, no spaces, got {batch_id!r}"
        )
    return batch_id


def _callback_name(name: object) -> str:
    plain = name[len("batch_") :] if isinstance(name, str) and name.startswith("batch_") else name
    if plain not in CALLBACKS:
        close = difflib.get_close_matches(str(plain), CALLBACKS, n=1)
        hint = f", did you mean {close[0]!r}?" if close else f" (known: {', '.join(CALLBACKS)})"
        raise ConfigError(f"unknown batch callback {name!r}{hint}")
    return str(plain)


def callback_spec(job: object, name: str) -> dict[str, Any]:
    """What the trigger needs to insert a callback job (its columns, as JSON)."""
    if not isinstance(job, Job):
        raise ConfigError(f"batch callback {name!r} must be a job (Worker.new(...)), got {job!r}")
    if job.unique is not None:
        raise ConfigError(f"batch callback {name!r} cannot be unique: it fires once anyway")
    return {
        "queue": job.queue, "worker": job.worker, "args": job.args, "meta": job.meta,
        "tags": job.tags, "priority": job.priority, "max_attempts": job.max_attempts,
    }  # fmt: skip


def member_jobs(jobs: Iterable[Job], batch_id: str) -> list[Job]:
    """Copies of `jobs` carrying `batch_id` in their meta. Unique jobs are refused: a
    conflict would return an existing job that the batch would count but not hold."""
    out = []
    for job in jobs:
        if not isinstance(job, Job):
            raise ConfigError(f"a batch holds jobs (Worker.new(...)), got {job!r}")
        if job.unique is not None:
            raise ConfigError(f"a batch cannot hold unique jobs ({job.worker})")
        out.append(replace(job, meta={**job.meta, BATCH_ID: batch_id}))
    return out


class Batch:
    """Jobs tracked as one group, with callback jobs (see the module's docstring).

    `jobs`: the jobs (may be empty for an open batch); `callbacks`: {name: job} (names
    in `CALLBACKS`, or Oban Pro's `batch_<name>`); `batch_id`: a string of your own
    (default: a new uuid); `open` (False): whether jobs may be appended until `close()`.
    """

    __slots__ = ("batch_id", "callbacks", "jobs", "open")

    def __init__(
        self,
        jobs: Iterable[Job] = (),
        callbacks: Mapping[str, Job] | None = None,
        *,
        batch_id: str | None = None,
        open: bool = False,
    ) -> None:
        self.batch_id = str(uuid.uuid4()) if batch_id is None else check_batch_id(batch_id)
        if not isinstance(open, bool):
            raise ConfigError(f"option 'open' must be True or False, got {open!r}")
        self.open = open
        if callbacks is not None and not isinstance(callbacks, Mapping):
            raise ConfigError(f"option 'callbacks' must be a dict of name: job, got {callbacks!r}")
        self.callbacks: dict[str, dict[str, Any]] = {}
        for name, job in (callbacks or {}).items():
            plain = _callback_name(name)
            self.callbacks[plain] = callback_spec(job, plain)
        self.jobs: list[Job] = member_jobs(jobs, self.batch_id)
        if not self.jobs and not self.open:
            raise ConfigError("a batch needs jobs, unless it is open (open=True)")

    def __repr__(self) -> str:
        return f"<Batch {self.batch_id} jobs={len(self.jobs)} open={self.open}>"
