"""Operator API of `Kerrera`: list and count jobs, act on jobs chosen by a filter."""

from __future__ import annotations

import difflib
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from kerrera.core.errors import ConfigError
from kerrera.core.job import UNFINISHED, Job, JobState
from kerrera.engine.inspect import JobFilter

if TYPE_CHECKING:
    from kerrera.engine.postgres import PostgresEngine

#: The states `count_jobs` reports, in the order a job usually goes through them.
#: The most jobs one `list_jobs` call returns (page with `before_id` for more).
MAX_LIST = 10_000
#: Jobs per statement of a bulk action: small enough that each one is a short
#: transaction holding few row locks, large enough that round trips do not dominate.
BULK_CHUNK = 1_000

_STATES = tuple(s.value for s in JobState)

#: Called as `on_progress(done, total)` while a bulk action runs.
Progress = Callable[[int, int], None]
Names = str | Sequence[str] | None


class _App(Protocol):
    """What these methods need of the `Kerrera` they are mixed into."""

    async def _open(self) -> PostgresEngine: ...


class InspectMixin:
    """Listing, counting and bulk management, mixed into `Kerrera`."""

    async def list_jobs(
        self: _App, *, state: Names = None, queue: Names = None, worker: Names = None,
        limit: int = 50, before_id: int | None = None,
    ) -> list[Job]:  # fmt: skip
        """Jobs matching every filter given, newest (highest id) first.

        `state`, `queue` and `worker` each take one name or a list of names (any of
        them matches). `limit` (50) is 1..10,000; `before_id` continues a listing below
        the last id of the previous page. An unknown state is a `ConfigError`.

        Example:
            failed = await app.list_jobs(state="discarded", worker="myapp.jobs.Mailer")
            older = await app.list_jobs(state="discarded", before_id=failed[-1].id)
        """
        where = listing_filter(state, queue, worker, limit, before_id)
        return await (await self._open()).list_jobs(where, limit, before_id)

    async def count_jobs(self: _App) -> dict[str, dict[str, int]]:
        """Unfinished jobs per queue and state: every queue that has any, with a count for
        each of `available`, `scheduled`, `retryable`, `executing` and `suspended`.
        Finished jobs are not counted, so this stays cheap on a table of millions.

        Example:
            counts = await app.count_jobs()
            backlog = counts.get("media", {}).get("available", 0)
        """
        return by_queue(await (await self._open()).count_jobs())

    async def retry_jobs_where(
        self: _App, *, state: Names = None, queue: Names = None, worker: Names = None,
        all_jobs: bool = False, on_progress: Progress | None = None,
    ) -> int:  # fmt: skip
        """`retry_job` for every job matching the filters (executing ones are skipped);
        returns how many were retried. At least one filter is required, or
        `all_jobs=True`. Jobs inserted after the call started are left alone; the work is
        done in chunks of ids (each its own transaction), reporting `on_progress(done,
        total)` after each.

        Example:
            n = await app.retry_jobs_where(state="discarded", worker="myapp.jobs.Mailer")
        """
        engine = await self._open()
        where = _bulk_filter("retry_jobs_where", state, queue, worker, all_jobs)
        return await act_on_matching(engine, engine.retry_jobs, where, on_progress)

    async def cancel_jobs_where(
        self: _App, *, state: Names = None, queue: Names = None, worker: Names = None,
        all_jobs: bool = False, on_progress: Progress | None = None,
    ) -> int:  # fmt: skip
        """`cancel_job` for every unfinished job matching the filters; returns how many
        were cancelled. Filters, chunks and progress as in `retry_jobs_where`.

        Example:
            n = await app.cancel_jobs_where(queue="exports", state=["available", "scheduled"])
        """
        engine = await self._open()
        where = _bulk_filter("cancel_jobs_where", state, queue, worker, all_jobs)
        return await act_on_matching(engine, engine.cancel_jobs, where, on_progress)

    async def delete_jobs_where(
        self: _App, *, state: Names = None, queue: Names = None, worker: Names = None,
        all_jobs: bool = False, on_progress: Progress | None = None,
    ) -> int:  # fmt: skip
        """`delete_job` for every job matching the filters that is not executing; returns
        how many were deleted. Filters, chunks and progress as in `retry_jobs_where`.

        Example:
            n = await app.delete_jobs_where(state="cancelled", queue="media")
        """
        engine = await self._open()
        where = _bulk_filter("delete_jobs_where", state, queue, worker, all_jobs)
        return await act_on_matching(engine, engine.delete_jobs, where, on_progress)


def listing_filter(
    state: Names, queue: Names, worker: Names, limit: int, before_id: int | None
) -> JobFilter:
    """The checked filter of `list_jobs`, its `limit` and `before_id` checked too."""
    where = job_filter(state, queue, worker)
    if type(limit) is not int or not 1 <= limit <= MAX_LIST:
        raise ConfigError(f"option 'limit' must be an integer from 1 to {MAX_LIST}, got {limit!r}")
    if before_id is not None and type(before_id) is not int:
        raise ConfigError(f"option 'before_id' must be a job id, got {before_id!r}")
    return where


def by_queue(rows: list[tuple[str, str, int]]) -> dict[str, dict[str, int]]:
    """`count_jobs` rows as {queue: {state: n}}, every unfinished state present."""
    out: dict[str, dict[str, int]] = {}
    for queue, state, n in rows:
        out.setdefault(queue, dict.fromkeys(UNFINISHED, 0))[state] = n
    return out


def job_filter(state: Names, queue: Names, worker: Names) -> JobFilter:
    """The checked `JobFilter` of the `state`, `queue` and `worker` options."""
    states = _names("state", state)
    for name in states or ():
        if name not in _STATES:
            close = difflib.get_close_matches(name, _STATES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"option 'state': unknown state {name!r}{hint}; valid states: " + ", ".join(_STATES)
            )
    return JobFilter(states, _names("queue", queue), _names("worker", worker))


def _names(option: str, value: Names) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = (value,) if isinstance(value, str) else tuple(value)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(
            f"option '{option}' must be a name or a non-empty list of names, got {value!r}"
        )
    return names


def _bulk_filter(call: str, state: Names, queue: Names, worker: Names, all_jobs: bool) -> JobFilter:
    where = job_filter(state, queue, worker)
    if where.empty and all_jobs is not True:
        # A forgotten filter must not act on the whole table.
        raise ConfigError(f"{call} needs a filter (state, queue or worker), or all_jobs=True")
    return where


async def act_on_ids(
    act: Callable[[Sequence[int]], Awaitable[list[Job]]],
    ids: Sequence[int],
    on_progress: Progress | None = None,
    chunk: int = BULK_CHUNK,
) -> list[Job]:
    """Run `act` (retry/cancel/delete) on the given ids, one chunk at a time; return the
    jobs it changed."""
    changed: list[Job] = []
    for start in range(0, len(ids), chunk):
        changed += await act(ids[start : start + chunk])
        if on_progress is not None:
            on_progress(min(start + chunk, len(ids)), len(ids))
    return changed


async def act_on_matching(
    engine: PostgresEngine,
    act: Callable[[Sequence[int]], Awaitable[list[Job]]],
    where: JobFilter,
    on_progress: Progress | None = None,
    chunk: int = BULK_CHUNK,
) -> int:
    """Run `act` (an engine's retry/cancel/delete) on the jobs matching `where` that exist
    now, one chunk of ids at a time; return how many jobs it changed."""
    upto = await engine.last_job_id()
    total = await engine.count_matching(where, upto) if on_progress else 0
    if on_progress:
        on_progress(0, total)
    after = done = changed = 0
    while True:
        ids = await engine.select_job_ids(where, after, upto, chunk)
        if not ids:
            break
        changed += len(await act(ids))
        done, after = done + len(ids), ids[-1]
        if on_progress:
            # Jobs may start matching while we work (e.g. newly discarded ones).
            on_progress(done, max(total, done))
        if len(ids) < chunk:
            break
    return changed
