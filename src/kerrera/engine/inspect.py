"""Read-mostly operations for operators (listing jobs, counting queues, choosing the
jobs of a bulk action), as steps that both engines drive (see steps.py). Their SQL lives
in `sql/inspect.sql`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kerrera.core.job import Job
from kerrera.engine.steps import Query, Steps, one


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Which jobs an operator query is about: each field is a set of accepted values,
    or None for any. Values are checked by the caller (`Kerrera.list_jobs` and co)."""

    states: tuple[str, ...] | None = None
    queues: tuple[str, ...] | None = None
    workers: tuple[str, ...] | None = None

    @property
    def empty(self) -> bool:
        """True when the filter matches every job."""
        return self.states is None and self.queues is None and self.workers is None

    def params(self) -> dict[str, Any]:
        """The statements' filter parameters (arrays, or NULL for any)."""
        return {
            "states": _array(self.states),
            "queues": _array(self.queues),
            "workers": _array(self.workers),
        }


def _array(values: tuple[str, ...] | None) -> list[str] | None:
    return None if values is None else list(values)


def list_jobs(where: JobFilter, limit: int, before_id: int | None) -> Steps[list[Job]]:
    """Up to `limit` jobs matching `where`, newest first, below `before_id` if given."""
    params = where.params()
    params.update(limit=limit, before=before_id)
    jobs: list[Job] = yield Query("list_jobs", params)
    return jobs


def count_jobs() -> Steps[list[tuple[str, str, int]]]:
    """(queue, state, count) of every queue's unfinished jobs (only states that have
    jobs appear)."""
    rows = yield from one("count_jobs", {})
    return [(str(queue), str(state), int(n)) for queue, state, n in rows]


def last_job_id() -> Steps[int]:
    """The highest job id now (0 for an empty table)."""
    rows = yield from one("last_job_id", {})
    return int(rows[0][0]) if rows else 0


def select_job_ids(where: JobFilter, after_id: int, upto_id: int, limit: int) -> Steps[list[int]]:
    """Ids of up to `limit` jobs matching `where` with after_id < id <= upto_id, in id
    order: one chunk of a bulk action."""
    params = where.params()
    params.update(after=after_id, upto=upto_id, limit=limit)
    rows = yield from one("select_job_ids", params)
    return [int(row[0]) for row in rows]


def count_matching(where: JobFilter, upto_id: int) -> Steps[int]:
    """How many jobs up to `upto_id` match `where`."""
    params = where.params()
    params.update(upto=upto_id)
    rows = yield from one("count_matching", params)
    return int(rows[0][0]) if rows else 0


def known_names() -> Steps[dict[str, list[str]]]:
    """{"queue": [...], "node": [...]}: every queue a node, a queue command or a job has
    used, and every node with a producer (live, or not yet expired), sorted."""
    rows = yield from one("known_names", {})
    names: dict[str, list[str]] = {"queue": [], "node": []}
    for kind, name in rows:
        names[str(kind)].append(str(name))
    return names
