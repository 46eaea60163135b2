"""Inserting unique jobs: the statements to run, as a generator that both engines drive.

The async and the sync engine differ only in how they execute a statement, so the steps
live here once (see steps.py). Every statement returns rows of `unique_row`: the job,
whether it was inserted, and the key of the new job it answers.

The steps: `find_duplicates` looks for rows that carry no Kerrera key (an Elixir Oban
job, or a plain insert) that Oban would call duplicates (see `Unique.lookup`), and
`replace_duplicates` applies `replace` to those; `insert_unique` inserts the rest under
the unique index, and `get_unique` reads the holders of keys it did not insert.

What stays racy between the two sides: the lookup is a read, like Oban's own check. Oban
guards that check with `pg_try_advisory_xact_lock` on an Erlang hash of the job
(`:erlang.phash2`) that Kerrera does not compute, and Elixir's check cannot see Kerrera's
key; so an Elixir node and Kerrera inserting the same job at the same moment can both
insert it. Only Kerrera's inserts among themselves are race-free (the unique index,
which Elixir's inserts do not go through).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from kerrera.core import codec
from kerrera.core.job import Job
from kerrera.core.unique import UNKEYED
from kerrera.engine.statements import job_row, unique_params
from kerrera.engine.steps import Query, Steps

Row = tuple[Job, bool, str]
#: A holder can vanish between the insert and the read (retired, pruned, finished into a
#: state that does not count): then the insert is simply tried again.
ATTEMPTS = 3


def insert_unique(jobs: list[Job], channel: str | None) -> Steps[list[Job]]:
    """Insert unique `jobs`; each comes back saved, or as the job already holding its key
    (or an Elixir duplicate) with `conflict=True`. Duplicates inside the batch resolve to
    the first of them."""
    keys = []
    for job in jobs:
        assert job.unique is not None
        keys.append(job.unique.key(job))
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        first.setdefault(key, i)
    found: dict[str, Job] = {}
    pending = list(first)
    for _ in range(ATTEMPTS):
        found |= yield from _duplicates({k: jobs[first[k]] for k in pending}, channel)
        batch = [k for k in pending if k not in found]
        if batch:
            params = unique_params([jobs[first[k]] for k in batch], batch, channel)
            for job, inserted, key in (yield Query("insert_unique", params, unique_row)):
                job.conflict = not inserted
                found[key] = job
        missing = [k for k in batch if k not in found]
        if missing:
            for job, _, key in (yield Query("get_unique", {"keys": missing}, unique_row)):
                job.conflict = True
                found[key] = job
        pending = [k for k in pending if k not in found]
        if not pending:
            break
    else:
        raise RuntimeError(
            f"unique insert of {len(pending)} job(s) kept losing the race "
            f"with their key's holder {ATTEMPTS} times"
        )
    return [
        found[k] if first[k] == i else replace(found[k], conflict=True) for i, k in enumerate(keys)
    ]


def _duplicates(jobs: dict[str, Job], channel: str | None) -> Steps[dict[str, Job]]:
    """The rows without a Kerrera key that duplicate `jobs` (by key), `replace` applied:
    one lookup per index it starts from (a batch usually has one)."""
    leads: dict[str, list[dict[str, Any]]] = {}
    for key, job in jobs.items():
        look = _lookup(job, key)
        leads.setdefault(look.pop("lead"), []).append(look)
    dupes: dict[str, Job] = {}
    for lead, lookups in leads.items():
        params = {"lookups": codec.dumps(lookups), "n": len(lookups), "lead": lead,
                  "unkeyed": sorted(UNKEYED)}  # fmt: skip
        for job, _, key in (yield Query("find_duplicates", params, unique_row)):
            job.conflict = True
            dupes[key] = job
    todo = {k: row for k, row in dupes.items() if _replaces(jobs[k], row)}
    if todo:
        params = {"jobs": _replacements(todo, jobs), "channel": channel}
        for job, _, key in (yield Query("replace_duplicates", params, unique_row)):
            job.conflict = True
            dupes[key] = job
    return dupes


def _lookup(job: Job, key: str) -> dict[str, Any]:
    """A `find_duplicates` row: what to compare, and the job's time for the period."""
    spec = job.unique
    assert spec is not None
    return {
        "ukey": key, **spec.lookup(job), "period": spec.period, "uts": spec.timestamp,
        "at": _iso(job), "delay": job.schedule_in,
    }  # fmt: skip


def _replaces(job: Job, row: Job) -> bool:
    """Whether `job`'s `replace` covers the state `row` was found in (the statement
    checks again against the state the row is in when it is updated)."""
    spec = job.unique
    return spec is not None and spec.replace is not None and row.state.value in spec.replace


def _replacements(rows: dict[str, Job], jobs: dict[str, Job]) -> str:
    """`replace_duplicates` rows: the found row's id and the new job's fields."""
    out = []
    for key, row in rows.items():
        job = jobs[key]
        assert job.unique is not None and job.unique.replace is not None
        out.append({
            "id": row.id, "ukey": key, "queue": job.queue, "worker": job.worker,
            "args": job.args, "meta": job.meta, "tags": job.tags, "priority": job.priority,
            "max_attempts": job.max_attempts, "at": _iso(job), "delay": job.schedule_in,
            "replace": {state: list(fields) for state, fields in job.unique.replace.items()},
        })  # fmt: skip
    return codec.dumps(out)


def _iso(job: Job) -> str | None:
    return None if job.scheduled_at is None else job.scheduled_at.isoformat()


def unique_row(cursor: Any) -> Callable[[Any], Row]:
    """psycopg row factory for `{cols}, inserted, ukey` rows: (Job, inserted, key)."""
    load = job_row(cursor)

    def row(values: Any) -> Row:
        return load(values), bool(values[14]), values[15]

    return row
