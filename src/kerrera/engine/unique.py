"""Inserting unique jobs: the statements to run, as a generator that both engines drive.

The async and the sync engine differ only in how they execute a statement, so the steps
live here once: `steps.send(rows)` returns the next (statement name, parameters) until
the generator returns the saved jobs.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import replace
from typing import Any

from kerrera._job import Job
from kerrera.engine.statements import unique_params

Step = tuple[str, dict[str, Any]]
#: A holder can vanish between the insert and the read (retired, pruned, finished into a
#: state that does not count): then the insert is simply tried again.
ATTEMPTS = 3


def insert_unique(
    jobs: list[Job], channel: str
) -> Generator[Step, list[tuple[Job, bool]], list[Job]]:
    """Insert unique `jobs`; each comes back saved, or as the job already holding its key
    with `conflict=True`. Duplicates inside the batch resolve to the first of them."""
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
        batch = [jobs[first[k]] for k in pending]
        rows = yield "insert_unique", unique_params(batch, pending, channel)
        for job, inserted in rows:
            job.conflict = not inserted
            found[job.meta["uniq_key"]] = job
        missing = [k for k in pending if k not in found]
        if missing:
            for job, _ in (yield "get_unique", {"keys": missing}):
                job.conflict = True
                found[job.meta["uniq_key"]] = job
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
