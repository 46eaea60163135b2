"""Read-mostly statements for operators (listing jobs, counting queues), mixed into
`PostgresEngine`. Their SQL lives in `sql/inspect.sql`."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from kerrera._job import Job
    from kerrera.engine.statements import Statements


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


class _Runner(Protocol):
    """What these queries need of the engine they are mixed into (PostgresEngine)."""

    async def _rows(self, name: str, params: dict[str, Any], conn: Any = None) -> list[Job]: ...

    async def _execute(self, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]: ...


class InspectQueries:
    """Operator queries of the engine (listing and counting jobs, bulk selections)."""

    async def list_jobs(
        self: _Runner, where: JobFilter, limit: int, before_id: int | None
    ) -> list[Job]:
        """Up to `limit` jobs matching `where`, newest first, below `before_id` if given."""
        params = where.params()
        params.update(limit=limit, before=before_id)
        return await self._rows("list_jobs", params)

    async def count_jobs(self: _Runner) -> list[tuple[str, str, int]]:
        """(queue, state, count) of every queue's unfinished jobs (only states that
        have jobs appear)."""
        rows = await self._execute("count_jobs", {})
        return [(str(queue), str(state), int(n)) for queue, state, n in rows]

    async def last_job_id(self: _Runner) -> int:
        """The highest job id now (0 for an empty table)."""
        rows = await self._execute("last_job_id", {})
        return int(rows[0][0]) if rows else 0

    async def select_job_ids(
        self: _Runner, where: JobFilter, after_id: int, upto_id: int, limit: int
    ) -> list[int]:
        """Ids of up to `limit` jobs matching `where` with after_id < id <= upto_id, in
        id order: one chunk of a bulk action."""
        params = where.params()
        params.update(after=after_id, upto=upto_id, limit=limit)
        return [int(row[0]) for row in await self._execute("select_job_ids", params)]

    async def count_matching(self: _Runner, where: JobFilter, upto_id: int) -> int:
        """How many jobs up to `upto_id` match `where`."""
        params = where.params()
        params.update(upto=upto_id)
        rows = await self._execute("count_matching", params)
        return int(rows[0][0]) if rows else 0


class SyncInspectQueries:
    """The sync engine's operator reads (`app.sync.list_jobs`, `app.sync.count_jobs`)."""

    # Provided by SyncPostgresEngine, which this class is mixed into.
    def _rows(self, name: str, params: dict[str, Any], conn: Any = None) -> list[Job]:
        raise NotImplementedError

    def _connection(self, conn: Any) -> AbstractContextManager[Any]:
        raise NotImplementedError

    sql: Statements

    def list_jobs(self, where: JobFilter, limit: int, before_id: int | None) -> list[Job]:
        """Up to `limit` jobs matching `where`, newest first, below `before_id` if given."""
        params = where.params()
        params.update(limit=limit, before=before_id)
        return self._rows("list_jobs", params)

    def count_jobs(self) -> list[tuple[str, str, int]]:
        """(queue, state, count) of every queue's unfinished jobs."""
        with self._connection(None) as c:
            rows = c.execute(self.sql["count_jobs"]).fetchall()
        return [(str(queue), str(state), int(n)) for queue, state, n in rows]
