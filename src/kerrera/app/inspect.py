"""Operator API of `Kerrera`: list and count jobs, act on jobs chosen by a filter."""

from __future__ import annotations

import asyncio
import difflib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from kerrera.core.errors import ConfigError
from kerrera.core.job import UNFINISHED, Job, JobState
from kerrera.engine.inspect import JobFilter

if TYPE_CHECKING:
    from kerrera.engine.postgres import PostgresEngine
    from kerrera.events.pubsub import Subscription

log = logging.getLogger("kerrera")

#: The states `count_jobs` reports, in the order a job usually goes through them.
#: The most jobs one `list_jobs` call returns (page with `before_id` for more).
MAX_LIST = 10_000
#: Jobs per statement of a bulk action: small enough that each one is a short
#: transaction holding few row locks, large enough that round trips do not dominate.
BULK_CHUNK = 1_000

_STATES = tuple(s.value for s in JobState)
#: The states each bulk action can change: a job in another state is left alone by it
#: (a running job is never retried or deleted; a finished one is never cancelled).
ACTABLE = {
    "retry": tuple(s for s in _STATES if s != "executing"),
    "cancel": UNFINISHED,
    "delete": tuple(s for s in _STATES if s != "executing"),
}
#: What `kerrera jobs retry` aims at when no state is given: the jobs that failed or
#: were stopped, never the completed ones.
FAILED_STATES = ("retryable", "discarded", "cancelled")

#: Called as `on_progress(done, total)` while a bulk action runs.
Progress = Callable[[int, int], None]
Names = str | Sequence[str] | None


class _App(Protocol):
    """What these methods need of the `Kerrera` they are mixed into."""

    async def _open(self) -> PostgresEngine: ...


class _Watchable(Protocol):
    """What `wait_until_finished` needs of a `Kerrera`."""

    async def get_job(self, job_id: int) -> Job | None: ...

    def subscribe(self, *targets: int | str) -> Subscription: ...


#: Seconds between two reads of a waited-for job's row: the fallback when its events
#: do not arrive (no notifications through a pooler, a lost connection).
WAIT_POLL = 2.0


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

    async def known_names(self: _App) -> dict[str, list[str]]:
        """Names in use, to tell a typo from a real name: `{"queue": [...], "node":
        [...]}`, the queues any node, queue command or job (in any state) has used, and
        the nodes with a live producer. Cheap on a large table (index probes only).

        Example:
            if "mail" not in (await app.known_names())["queue"]: ...
        """
        return await (await self._open()).known_names()

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
        return await act_on_matching(
            engine, engine.retry_jobs, actable(where, "retry"), on_progress
        )

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
        return await act_on_matching(
            engine, engine.cancel_jobs, actable(where, "cancel"), on_progress
        )

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
        return await act_on_matching(
            engine, engine.delete_jobs, actable(where, "delete"), on_progress
        )

    async def preview_jobs_where(
        self: _App, action: str, *, state: Names = None, queue: Names = None,
        worker: Names = None, all_jobs: bool = False, sample: int = 5,
    ) -> tuple[int, list[Job]]:  # fmt: skip
        """What `<action>_jobs_where` (action `retry`, `cancel` or `delete`) would change
        now, without changing anything: how many jobs, and up to `sample` of them (the
        newest). Jobs the action would skip (a running job for retry, a finished one for
        cancel) are not counted. Used to ask before a bulk action.

        Example:
            count, some = await app.preview_jobs_where("retry", state="discarded")
        """
        if action not in ACTABLE:
            raise ConfigError(f"preview_jobs_where: action must be one of {sorted(ACTABLE)}")
        if type(sample) is not int or not 1 <= sample <= MAX_LIST:
            raise ConfigError(f"option 'sample' must be an integer from 1 to {MAX_LIST}")
        engine = await self._open()
        where = actable(
            _bulk_filter(f"{action}_jobs_where", state, queue, worker, all_jobs), action
        )
        if where.states == ():
            return 0, []
        upto = await engine.last_job_id()
        count = await engine.count_matching(where, upto)
        return count, await engine.list_jobs(where, sample, upto + 1) if count else []


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


def actable(where: JobFilter, action: str) -> JobFilter:
    """`where` narrowed to the states `action` can change (its states then may be
    empty: nothing to do). The action would skip the others anyway; naming the states
    keeps the statements on the index that starts with state."""
    allowed = ACTABLE[action]
    states = allowed if where.states is None else tuple(s for s in where.states if s in allowed)
    return JobFilter(states, where.queues, where.workers)


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
    if where.states == ():
        return 0
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


def wait_target(job: Job | int, timeout: float | None) -> int:
    """The id of the job `wait` is given, its `timeout` checked."""
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0
    ):
        raise ConfigError(f"option 'timeout' must be None or seconds >= 0, got {timeout!r}")
    job_id = job.id if isinstance(job, Job) else job
    if isinstance(job_id, bool) or not isinstance(job_id, int):
        raise ConfigError(f"wait: give a saved job or a job id, got {job!r}")
    return job_id


async def wait_until_finished(app: _Watchable, job_id: int, poll: float = WAIT_POLL) -> Job:
    """The job once it is completed, discarded or cancelled (as stored then). Wakes on
    the job's events; reads the row every `poll` seconds too, and when an event says it
    ended (the row is the truth: the job may have been retried since)."""
    found = await app.get_job(job_id)
    if found is None:
        raise LookupError(f"no job {job_id}")
    if found.state.terminal:
        return found
    events = app.subscribe(job_id)
    try:
        await events.open()
    except Exception as exc:  # no LISTEN (a pooler in transaction mode): poll alone
        log.warning("job %s: waiting without events, by polling (%s)", job_id, exc)
        events.close()
    try:
        while True:
            try:
                event = await asyncio.wait_for(anext(events), poll)
            except TimeoutError:
                event = None
            except StopAsyncIteration:  # no subscription (any more): poll on
                await asyncio.sleep(poll)
                event = None
            if event is not None and not event.finished:
                continue
            found = await app.get_job(job_id)
            if found is None:
                raise LookupError(f"job {job_id} was deleted while being waited for")
            if found.state.terminal:
                return found
    finally:
        events.close()
