"""The operator dashboard's queries: counts, lists, search, job detail, queues, errors,
charts and a health check, written to stay fast on tables of tens of millions of jobs.

Every query is served by an index (migration 8 adds the ones Oban lacks; `doctor()`
reports missing ones): lists page by id (keyset, newest first), counts stop at
`exact_limit` and fall back to the planner's estimate (shown as `~`), searches use
containment on the GIN indexes of args, meta and tags, and charts read the per-minute
aggregates of `kerrera_job_stats` (written by `services.stats`), never `oban_jobs`.

Searches come in parsed (`kerrera.core.search.Search`); each field adds one fixed SQL
fragment with its own parameters, so nothing typed by an operator becomes SQL text.
Statements are not prepared: each search shape is planned with its values in hand.

Example:
    dash = await Dashboard.connect("postgresql://localhost/app")
    counts = await dash.state_counts()
    page = await dash.list_jobs("retryable", parse_search("queues:mail"), limit=20)
    more = await dash.list_jobs("retryable", parse_search("queues:mail"), older_than=page.older)
"""

from __future__ import annotations

import json
import math
import time
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import accumulate
from typing import Any

import psycopg
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from kerrera.core.job import UNFINISHED, Job, JobState
from kerrera.core.options import check_prefix
from kerrera.core.search import PathFilter, Search
from kerrera.engine.migrations.web import BOUNDS_MS, INDEXES, SPANS
from kerrera.engine.statements import Statements, job_row

#: The states in the order the dashboard shows them.
STATES: tuple[str, ...] = (
    "executing", "available", "scheduled", "retryable",
    "cancelled", "discarded", "completed", "suspended",
)  # fmt: skip
#: Indexes every dashboard query relies on: Oban's own, Kerrera's earlier ones, and
#: migration 8's.
EXPECTED_INDEXES: tuple[str, ...] = (
    "oban_jobs_pkey",
    "oban_jobs_state_queue_priority_scheduled_at_id_index",
    "oban_jobs_args_index",
    "oban_jobs_meta_index",
    *(name for name, _ in INDEXES),
)
#: A table whose rows changed by more than this share since its last analyze has
#: statistics too stale for the estimated counts (and the planner) to be trusted.
STALE_SHARE = 0.2
#: What is estimated above this many times the limit is not counted: a filter served by
#: a GIN index (tags, args, meta) collects every match before the first one is counted,
#: so counting "up to the limit" could read them all.
_COUNT_FACTOR = 2
#: Session settings of every dashboard read (local to its transaction): no JIT (its
#: compile time dwarfs these queries), enough memory for a bitmap of a million matches
#: to stay exact (a lossy one rechecks whole pages), no parallel workers (a dashboard
#: must not take the cores the jobs need), and a time limit.
_SETTINGS = (
    "SET LOCAL jit = off; SET LOCAL work_mem = '32MB'; "
    "SET LOCAL max_parallel_workers_per_gather = 0; SET LOCAL statement_timeout = {ms}"
)
_CHART_BY = ("all", "queue", "worker")
_EPOCH = datetime(1970, 1, 1)
#: The value a histogram bucket stands for: the geometric middle of its bounds.
_MIDDLES = tuple(
    math.sqrt(BOUNDS_MS[i] * (BOUNDS_MS[i - 1] if i else BOUNDS_MS[0] / math.sqrt(2)))
    for i in range(len(BOUNDS_MS))
)
#: What `suggest` offers for each field: an expression over one recent job (fixed text).
_SUGGEST = {
    "queues": "queue",
    "workers": "worker",
    "tags": "unnest(tags)",
    "nodes": "attempted_by[1]",
    "args": "jsonb_object_keys(args)",
    "meta": "jsonb_object_keys(meta)",
}
#: How many of the newest jobs suggestions are drawn from.
SUGGEST_SAMPLE = 500


class DashboardTimeout(TimeoutError):
    """A dashboard query ran past its time limit (`query_timeout`) and was cancelled."""


@dataclass(frozen=True, slots=True)
class Count:
    """A number of jobs: exact, or the planner's estimate (`exact=False`, shown `~`)."""

    value: int
    exact: bool

    @property
    def label(self) -> str:
        """`12,345`, or `~10,000,000` for an estimate."""
        return f"{'' if self.exact else '~'}{self.value:,}"


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of a listing, newest first, with the cursors of its neighbours: pass
    `older` as `older_than` for the next page, `newer` as `newer_than` for the previous
    one (None: there is none)."""

    jobs: list[Job]
    older: int | None
    newer: int | None


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """Unfinished jobs of one queue, per state (every state of `UNFINISHED` present)."""

    queue: str
    counts: dict[str, Count]


@dataclass(frozen=True, slots=True)
class ErrorGroup:
    """Failed jobs of one worker with the same exception type (in the recent sample)."""

    worker: str
    kind: str
    count: int
    last_at: datetime | None
    sample_id: int
    message: str


@dataclass(frozen=True, slots=True)
class Percentiles:
    """Milliseconds (None when no job finished in the bin); within ~20% (histogram)."""

    p50: float | None
    p95: float | None
    p99: float | None


@dataclass(frozen=True, slots=True)
class StatPoint:
    """One bin of a chart: outcomes and time distributions of jobs that finished."""

    at: datetime
    key: str
    completed: int
    failed: int
    cancelled: int
    other: int
    exec_ms: Percentiles
    queue_ms: Percentiles


@dataclass(frozen=True, slots=True)
class Finding:
    """One result of `doctor()`: level `ok`, `warning` or `error`."""

    level: str
    subject: str
    message: str
    fix: str


class Dashboard:
    """Read-only queries of the dashboard over a pool of autocommit connections.

    Options:
        pool: a psycopg `AsyncConnectionPool` whose connections are in autocommit mode
            (`Kerrera.engine.pool` of an opened app, or `Dashboard.connect(dsn)`).
        prefix: the schema of `oban_jobs` (default "public").
        exact_limit: counts above it are estimates (default 50,000).
        sample_limit: how many of the newest failed jobs per state `error_groups`
            looks at (default 1,000).
        count_timeout: seconds the counts of one call may take together; those not
            done by then show their estimate (default 0.1).
        probe_timeout: seconds an args/meta search walks the id index before it
            collects the matches from the GIN index instead (default 0.03).
        query_timeout: seconds any other query may take before `DashboardTimeout`
            (default 10).
        explain: record the plan of every query in `plans` (tests, benchmarks).
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        prefix: str = "public",
        *,
        exact_limit: int = 50_000,
        sample_limit: int = 1_000,
        count_timeout: float = 0.1,
        query_timeout: float = 10.0,
        probe_timeout: float = 0.03,
        explain: bool = False,
    ) -> None:
        for name, value in (("exact_limit", exact_limit), ("sample_limit", sample_limit)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"option {name!r} must be a positive integer, got {value!r}")
        timeouts = (("count_timeout", count_timeout), ("query_timeout", query_timeout),
                    ("probe_timeout", probe_timeout))  # fmt: skip
        for name, seconds in timeouts:
            if (not isinstance(seconds, int | float) or isinstance(seconds, bool)
                    or not 0 < seconds <= 3600):  # fmt: skip
                raise ValueError(f"option {name!r} must be seconds in (0, 3600], got {seconds!r}")
        self.count_timeout = float(count_timeout)
        self.query_timeout = float(query_timeout)
        self.probe_timeout = float(probe_timeout)
        self.pool = pool
        self.prefix = check_prefix(prefix)
        self.exact_limit = exact_limit
        self.sample_limit = sample_limit
        self._sql = Statements(self.prefix)
        self._p = f'"{self.prefix}"'
        self._owned = False
        self.explain = explain
        #: With `explain=True`: the plan of every query run, as (statement, plan text).
        self.plans: list[tuple[str, str]] = []

    @classmethod
    async def connect(cls, dsn: str, prefix: str = "public", **options: Any) -> Dashboard:
        """A dashboard on a pool of its own (closed by `close()`)."""
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            dsn, min_size=1, max_size=4, open=False, kwargs={"autocommit": True},
            name="kerrera-dashboard",
        )  # fmt: skip
        await pool.open(wait=True, timeout=30)
        dash = cls(pool, prefix, **options)
        dash._owned = True
        return dash

    async def close(self) -> None:
        """Close the pool if `connect()` made it (a pool given to us is the caller's)."""
        if self._owned:
            await self.pool.close()

    # -- running statements ----------------------------------------------------------------
    async def _rows(
        self, sql: str, params: dict[str, Any], row: Any = tuple_row, *,
        timeout: float | None = None, settings: str = "",
    ) -> list[Any]:  # fmt: skip
        """Run one read in a transaction of its own, with the session settings of a
        dashboard read (see `_SETTINGS`) and a time limit (`query_timeout` unless
        given): past it, `DashboardTimeout`."""
        limit = self.query_timeout if timeout is None else timeout
        async with self.pool.connection() as conn:
            try:
                async with conn.transaction(), conn.cursor(row_factory=row) as cur:
                    await cur.execute(_SETTINGS.format(ms=max(1, int(limit * 1000))) + settings)
                    if self.explain and not sql.startswith("EXPLAIN"):
                        async with conn.cursor() as plan:
                            await plan.execute(f"EXPLAIN {sql}", params, prepare=False)
                            lines = [str(r[0]) for r in await plan.fetchall()]
                        self.plans.append((sql, "\n".join(lines)))
                    # Not prepared: a generic plan for one search shape would ignore how
                    # selective its values are (a rare queue versus a busy one).
                    await cur.execute(sql, params, prepare=False)
                    return await cur.fetchall() if cur.description else []
            except psycopg.errors.QueryCanceled as exc:
                raise DashboardTimeout(
                    f"the dashboard query took longer than {limit:g}s (option "
                    "'query_timeout'): narrow the search"
                ) from exc

    async def _counts(self, wheres: list[str], params: dict[str, Any], cap: int) -> list[Count]:
        """Counts of each WHERE clause: exact up to `cap`, else the planner's estimate.

        One EXPLAIN estimates them all; only those estimated at most `_COUNT_FACTOR`
        times `cap` are then counted, each stopping at `cap + 1` and given
        `count_timeout` seconds (a match spread thin over a big table can take long to
        reach: then the estimate is shown)."""
        estimates = await self._estimates(wheres, params)
        deadline = time.monotonic() + self.count_timeout  # for all the counts together
        out: list[Count] = []
        for where, estimate in zip(wheres, estimates, strict=True):
            left = deadline - time.monotonic()
            if estimate > cap * _COUNT_FACTOR or left < 0.005:
                out.append(Count(estimate, False))
                continue
            sql = (
                f"SELECT count(*) FROM (SELECT 1 FROM {self._p}.oban_jobs WHERE {where} "
                "LIMIT %(cap)s) AS c"
            )
            try:
                rows = await self._rows(sql, {**params, "cap": cap + 1}, timeout=left)
            except DashboardTimeout:
                out.append(Count(max(estimate, 1), False))
                continue
            n = int(rows[0][0])
            # Never show an estimate below what was just counted.
            out.append(Count(n, True) if n <= cap else Count(max(estimate, n), False))
        return out

    async def _ordered(
        self, sql: str, params: dict[str, Any], search: Search | None, row: Any = tuple_row
    ) -> list[Any]:
        """Run a query that reads the first few matches in id order.

        With an args or meta search the planner cannot tell a value held by half the
        jobs from one held by three (containment has no statistics), so it cannot choose
        between walking the id index until enough rows match (right for common values)
        and collecting every match from the GIN index first (right for rare ones). Both
        are tried: the walk for `probe_timeout` seconds, then the collection."""
        if search is None or not (search.args or search.meta):
            return await self._rows(sql, params, row)
        try:
            return await self._rows(sql, params, row, timeout=self.probe_timeout,
                                    settings="; SET LOCAL enable_bitmapscan = off")  # fmt: skip
        except DashboardTimeout:
            return await self._rows(sql, params, row, settings="; SET LOCAL enable_indexscan = off")

    async def _estimates(self, wheres: list[str], params: dict[str, Any]) -> list[int]:
        """The planner's row estimate of each WHERE clause, from one EXPLAIN of them
        all (a UNION ALL: the estimate of each branch is its child of the Append)."""
        branches = " UNION ALL ".join(
            f"SELECT 1 FROM {self._p}.oban_jobs WHERE {where}" for where in wheres
        )
        rows = await self._rows(f"EXPLAIN (FORMAT JSON) {branches}", params)
        doc = rows[0][0]
        plan = (json.loads(doc) if isinstance(doc, str) else doc)[0]["Plan"]
        if len(wheres) == 1:
            return [int(plan["Plan Rows"])]
        if plan.get("Node Type") != "Append" or len(plan.get("Plans", ())) != len(wheres):
            raise RuntimeError(f"unexpected plan for the count estimates: {plan.get('Node Type')}")
        return [int(child["Plan Rows"]) for child in plan["Plans"]]

    # -- counts and lists ------------------------------------------------------------------
    async def state_counts(self, search: Search | None = None) -> dict[str, Count]:
        """Jobs per state (every state of `STATES` present), matching `search` if given."""
        base, params = self._where(None, search)
        wheres = []
        for i, state in enumerate(STATES):
            params[f"state_{i}"] = state
            wheres.append(f"state = %(state_{i})s::{self._p}.oban_job_state AND {base}")
        counts = await self._counts(wheres, params, self.exact_limit)
        return dict(zip(STATES, counts, strict=True))

    async def list_jobs(
        self,
        state: str,
        search: Search | None = None,
        *,
        limit: int = 20,
        older_than: int | None = None,
        newer_than: int | None = None,
    ) -> JobPage:
        """A page of `state`'s jobs matching `search`, newest first (see `JobPage`)."""
        _check_state(state)
        _check_int("limit", limit, 1, 200)
        if older_than is not None and newer_than is not None:
            raise ValueError("give option 'older_than' or 'newer_than', not both")
        where, params = self._where(state, search)
        params["limit"] = limit + 1
        head = self._sql["dashboard_jobs"]
        if newer_than is not None:
            _check_int("newer_than", newer_than, 0, 2**63 - 1)
            params["newer"] = newer_than
            sql = f"{head} WHERE {where} AND id > %(newer)s ORDER BY id LIMIT %(limit)s"
            jobs: list[Job] = await self._ordered(sql, params, search, job_row)
            more_newer = len(jobs) > limit
            jobs = jobs[:limit][::-1]
            newer = jobs[0].id if more_newer and jobs else None
            older = jobs[-1].id if jobs else newer_than + 1
            return JobPage(jobs, older, newer)
        if older_than is not None:
            _check_int("older_than", older_than, 0, 2**63 - 1)
            params["older"] = older_than
            where += " AND id < %(older)s"
        sql = f"{head} WHERE {where} ORDER BY id DESC LIMIT %(limit)s"
        jobs = await self._ordered(sql, params, search, job_row)
        older = jobs[limit - 1].id if len(jobs) > limit else None
        jobs = jobs[:limit]
        newer = None if older_than is None else (jobs[0].id if jobs else older_than - 1)
        return JobPage(jobs, older, newer)

    async def job(self, job_id: int) -> Job | None:
        """One job with every column, or None."""
        _check_int("job_id", job_id, 1, 2**63 - 1)
        rows: list[Job] = await self._rows(self._sql["dashboard_job"], {"id": job_id}, job_row)
        return rows[0] if rows else None

    async def worker_jobs(
        self, worker: str, *, exclude: int | None = None, limit: int = 10
    ) -> list[Job]:
        """The newest jobs of `worker`, in any state (but `exclude`)."""
        _check_int("limit", limit, 1, 200)
        params = {"worker": worker, "exclude": exclude or 0, "limit": limit}
        return await self._rows(self._sql["dashboard_worker_jobs"], params, job_row)

    # -- bulk actions ----------------------------------------------------------------------
    async def last_id(self) -> int:
        """The highest job id now: a bulk action's upper bound, fixed at its dry run so
        that jobs inserted meanwhile are left alone."""
        rows = await self._rows(self._sql["dashboard_last_id"], {})
        return int(rows[0][0])

    async def count_matching(
        self, state: str | None, search: Search | None, *, upto_id: int, cap: int
    ) -> Count:
        """How many jobs up to `upto_id` match (exact up to `cap`, else an estimate)."""
        if state is not None:
            _check_state(state)
        _check_int("cap", cap, 1, 10**9)
        where, params = self._where(state, search)
        params["upto"] = upto_id
        return (await self._counts([f"{where} AND id <= %(upto)s"], params, cap))[0]

    async def match_ids(
        self, state: str | None, search: Search | None, *, after_id: int, upto_id: int,
        limit: int,
    ) -> list[int]:  # fmt: skip
        """One chunk of a bulk action: ids in (after_id, upto_id] that match, ascending."""
        if state is not None:
            _check_state(state)
        _check_int("limit", limit, 1, 100_000)
        where, params = self._where(state, search)
        params.update(after=after_id, upto=upto_id, limit=limit)
        sql = (
            f"SELECT id FROM {self._p}.oban_jobs WHERE {where} AND id > %(after)s "
            "AND id <= %(upto)s ORDER BY id LIMIT %(limit)s"
        )
        return [int(r[0]) for r in await self._ordered(sql, params, search)]

    # -- queues, suggestions, errors -------------------------------------------------------
    async def queue_counts(self, *, cap: int | None = None) -> list[QueueCounts]:
        """Unfinished jobs per queue and state, exact up to `cap` (default: a fifth of
        `exact_limit`: this page counts many pairs), else estimated."""
        cap = max(1, self.exact_limit // 5) if cap is None else cap
        _check_int("cap", cap, 1, 10**9)
        queues: set[tuple[str, str]] = set()
        for state in UNFINISHED:
            rows = await self._rows(self._sql["dashboard_queues"], {"state": state})
            queues.update((str(r[0]), state) for r in rows)
        pairs = sorted(queues)
        wheres, params = [], {}
        for i, (queue, state) in enumerate(pairs):
            wheres.append(f"state = %(s_{i})s::{self._p}.oban_job_state AND queue = %(q_{i})s")
            params.update({f"s_{i}": state, f"q_{i}": queue})
        counts = await self._counts(wheres, params, cap) if pairs else []
        out: dict[str, dict[str, Count]] = {}
        for (queue, state), count in zip(pairs, counts, strict=True):
            out.setdefault(queue, {s: Count(0, True) for s in UNFINISHED})[state] = count
        return [QueueCounts(q, out[q]) for q in sorted(out)]

    async def suggest(self, field: str, prefix: str = "", *, limit: int = 10) -> list[str]:
        """Values of `field` seen in the newest `SUGGEST_SAMPLE` jobs that start with
        `prefix` (for args and meta: their top-level keys), most frequent first."""
        if field not in _SUGGEST:
            raise ValueError(f"option 'field' must be one of {', '.join(_SUGGEST)}, got {field!r}")
        _check_int("limit", limit, 1, 100)
        sql = self._sql["dashboard_suggest"].replace("{value}", _SUGGEST[field])
        params = {"sample": SUGGEST_SAMPLE, "prefix": prefix, "limit": limit}
        return [str(r[0]) for r in await self._rows(sql, params)]

    async def error_groups(self, *, limit: int = 50) -> list[ErrorGroup]:
        """Failed (retryable and discarded) jobs grouped by worker and exception type,
        among the newest `sample_limit` of each state, largest group first."""
        _check_int("limit", limit, 1, 1000)
        params = {"sample": self.sample_limit, "limit": limit}
        rows = await self._rows(self._sql["dashboard_errors"], params)
        return [
            ErrorGroup(str(w), str(k), int(n), _parse_at(at), int(i), str(m or ""))
            for w, k, n, at, i, m in rows
        ]

    # -- charts ----------------------------------------------------------------------------
    async def chart(
        self,
        *,
        window: timedelta = timedelta(hours=1),
        by: str = "all",
        queues: Sequence[str] = (),
        workers: Sequence[str] = (),
        points: int = 60,
        now: datetime | None = None,
    ) -> list[StatPoint]:
        """Outcomes and execution / queue time percentiles per bin over `window` (5
        minutes to 24 hours), per queue, per worker or all together (`by`)."""
        if not timedelta(minutes=1) <= window <= timedelta(days=7):
            raise ValueError(f"option 'window' must be 1 minute to 7 days, got {window}")
        if by not in _CHART_BY:
            raise ValueError(f"option 'by' must be one of {', '.join(_CHART_BY)}, got {by!r}")
        _check_int("points", points, 1, 1440)
        wanted = window.total_seconds() / points
        span = SPANS[-1] if wanted > 300 else SPANS[0]
        step = max(span, round(wanted / span) * span)
        if now is None:
            rows = await self._rows("SELECT timezone('UTC', now())", {})
            now = rows[0][0]
        assert now is not None
        if now.tzinfo is not None:
            now = now.astimezone(UTC).replace(tzinfo=None)
        # Bins start on multiples of the span (UTC), as the stored buckets do.
        seconds = (now - window - _EPOCH).total_seconds() // span * span
        since = _EPOCH + timedelta(seconds=seconds)
        params: dict[str, Any] = {"span": span, "since": since}
        # Which stored grouping to read (fixed fragments; names are parameters).
        if workers:
            clause = "worker = ANY(%(workers)s::text[])"
            params["workers"] = list(workers)
            if queues:
                clause += " AND queue = ANY(%(queues)s::text[])"
                params["queues"] = list(queues)
        elif queues:
            # Per worker: the workers' rows of those queues; else the queues' own rows.
            worker = "worker <> ''" if by == "worker" else "worker = ''"
            clause = f"{worker} AND queue = ANY(%(queues)s::text[])"
            params["queues"] = list(queues)
        else:
            clause = {"all": "queue = '' AND worker = ''", "queue": "worker = '' AND queue <> ''",
                      "worker": "worker <> ''"}[by]  # fmt: skip
        sql = f"{self._sql['stats_read']} AND {clause}"
        bins: dict[tuple[datetime, str], _Bin] = {}
        for bucket, queue, worker, *counts, exec_h, queue_h in await self._rows(sql, params):
            offset = (bucket - since).total_seconds() // step * step
            key = {"all": "", "queue": queue, "worker": worker}[by]
            bin_ = bins.setdefault((since + timedelta(seconds=offset), key), _Bin())
            bin_.add(counts, exec_h, queue_h)
        return [b.point(at, key) for (at, key), b in sorted(bins.items())]

    # -- edits and cron (for the dashboard's pages) ------------------------------------------
    async def update_job(
        self,
        job_id: int,
        *,
        args: dict[str, Any] | None = None,
        queue: str | None = None,
        priority: int | None = None,
        scheduled_at: datetime | None = None,
    ) -> Job | None:
        """Change a waiting (available, scheduled, retryable or suspended) job in one
        guarded statement; None keeps a column. Returns the job as saved, or None when
        it is gone or no longer waiting (it started meanwhile). A new `scheduled_at`
        (naive UTC) makes it scheduled, or available when due; a suspended workflow step
        stays suspended. Values are expected checked (`kerrera.core.options`)."""
        _check_int("job_id", job_id, 1, 2**63 - 1)
        if priority is not None:
            _check_int("priority", priority, 0, 9)
        params = {
            "id": job_id, "args": None if args is None else json.dumps(args),
            "queue": queue, "priority": priority, "scheduled_at": scheduled_at,
        }  # fmt: skip
        rows: list[Job] = await self._rows(self._sql["dashboard_update_job"], params, job_row)
        return rows[0] if rows else None

    async def cron_entries(self) -> list[tuple[str, datetime, datetime]]:
        """The cluster's cron entries as (name, last evaluated instant, updated at), naive
        UTC, by name; [] on a database without the cron table."""
        try:
            rows = await self._rows(self._sql["dashboard_cron"], {})
        except psycopg.errors.UndefinedTable:
            return []
        return [(str(name), last, updated) for name, last, updated in rows]

    # -- health ----------------------------------------------------------------------------
    async def doctor(self) -> list[Finding]:
        """Missing or invalid indexes, and stale planner statistics of `oban_jobs`."""
        table = f"{self._p}.oban_jobs"
        rows = await self._rows(self._sql["dashboard_indexes"], {"table": table})
        if not rows:
            return [Finding("error", table, "oban_jobs does not exist", "kerrera migrate")]
        valid = {str(name): bool(ok) for name, ok in rows}
        findings = [_index_finding(name, valid.get(name)) for name in EXPECTED_INDEXES]
        stats = await self._rows(self._sql["dashboard_table_stats"], {"table": table})
        findings.append(_stats_finding(table, *stats[0]) if stats else _no_stats(table))
        return findings

    # -- the WHERE clause ------------------------------------------------------------------
    def _where(self, state: str | None, search: Search | None) -> tuple[str, dict[str, Any]]:
        """Fixed fragments joined with AND, and their parameters. Only the presence of a
        field decides which fragments appear; values are always parameters."""
        clauses = ["TRUE"]
        params: dict[str, Any] = {}
        if state is not None:
            clauses.append(f"state = %(state)s::{self._p}.oban_job_state")
            params["state"] = state
        if search is None:
            return " AND ".join(clauses), params
        plain = (
            ("queues", "queue = ANY(%(queues)s::text[])"),
            ("workers", "worker = ANY(%(workers)s::text[])"),
            ("tags", "tags && %(tags)s::text[]"),
            ("nodes", "attempted_by[1] = ANY(%(nodes)s::text[])"),
            ("priorities", "priority = ANY(%(priorities)s::int[])"),
            ("ids", "id = ANY(%(ids)s::bigint[])"),
        )
        for name, fragment in plain:
            values = getattr(search, name)
            if values:
                clauses.append(fragment)
                params[name] = list(values)
        for column in ("args", "meta"):
            for i, flt in enumerate(getattr(search, column)):
                key = f"{column}_{i}"
                # Containment (GIN index) against every JSON form the values may take.
                clauses.append(f"{column} @> ANY(%({key})s::jsonb[])")
                params[key] = _documents(flt)
        return " AND ".join(clauses), params


def _documents(flt: PathFilter) -> list[str]:
    """JSON documents that a matching args/meta contains: the value as text, and as the
    number / boolean / null it spells. (An element of an array at that path is not
    matched: each extra document is one more GIN index search.)"""
    docs: list[str] = []
    for raw in flt.values:
        for value in _json_forms(raw):
            doc: Any = value
            for key in reversed(flt.path):
                doc = {key: doc}
            text = json.dumps(doc, separators=(",", ":"))
            if text not in docs:
                docs.append(text)
    return docs


def _json_forms(raw: str) -> list[Any]:
    forms: list[Any] = [raw]
    literal = {"true": True, "false": False, "null": None}
    if raw in literal:
        forms.append(literal[raw])
        return forms
    try:
        number = float(raw)
    except ValueError:
        return forms
    if math.isfinite(number):
        forms.append(int(number) if number.is_integer() and "." not in raw else number)
    return forms


class _Bin:
    """The stored rows that fall in one point of a chart, added up."""

    __slots__ = ("counts", "exec_hist", "queue_hist")

    def __init__(self) -> None:
        self.counts = [0, 0, 0, 0]
        self.exec_hist: list[int] | None = None
        self.queue_hist: list[int] | None = None

    def add(self, counts: list[int], exec_hist: list[int], queue_hist: list[int]) -> None:
        self.counts = [a + int(b) for a, b in zip(self.counts, counts, strict=True)]
        self.exec_hist = _add(self.exec_hist, exec_hist)
        self.queue_hist = _add(self.queue_hist, queue_hist)

    def point(self, at: datetime, key: str) -> StatPoint:
        c = self.counts
        return StatPoint(at, key, c[0], c[1], c[2], c[3],
                         _percentiles(self.exec_hist), _percentiles(self.queue_hist))  # fmt: skip


def _add(total: list[int] | None, hist: list[int]) -> list[int]:
    # The first row of a bin is taken as it is: most bins have one row per series.
    return list(hist) if total is None else [a + b for a, b in zip(total, hist, strict=False)]


def _percentiles(hist: list[int] | None) -> Percentiles:
    """p50/p95/p99 of a histogram: the geometric middle of the bucket holding each
    (within ~19% of the true value, buckets being sqrt(2) wide)."""
    running = list(accumulate(hist or []))
    if not running or not running[-1]:
        return Percentiles(None, None, None)
    last = min(len(running), len(_MIDDLES)) - 1

    def at(q: float) -> float:
        return round(_MIDDLES[min(bisect_left(running, q * running[-1]), last)], 3)

    return Percentiles(at(0.50), at(0.95), at(0.99))


def _index_finding(name: str, valid: bool | None) -> Finding:
    optional = name in _OPTIONAL
    if valid is None and optional:
        return Finding(
            "warning", name, "dashboard index is missing: lists and searches on large "
            "tables may be slow (it is opt-in: it costs every insert and ack)",
            "kerrera web indexes",
        )  # fmt: skip
    if valid is None:
        return Finding("error", name, "index is missing", "kerrera migrate")
    if not valid:
        return Finding(
            "error", name, "index is invalid (an interrupted concurrent build)",
            "kerrera web indexes (rebuilds it)" if optional else "kerrera migrate (rebuilds it)",
        )  # fmt: skip
    return Finding("ok", name, "index present", "")


#: The dashboard's own indexes: opt-in (`kerrera web indexes`), not built by migrations.
_OPTIONAL = frozenset(name for name, _ in INDEXES)


def _stats_finding(table: str, live: int, changed: int, analyzed: datetime | None) -> Finding:
    if analyzed is None and live:
        return Finding("warning", table, "never analyzed: counts shown as ~ may be far off",
                       f"ANALYZE {table}")  # fmt: skip
    if changed > STALE_SHARE * max(live, 1) and changed > 1000:
        return Finding(
            "warning", table,
            f"statistics are stale: {changed:,} rows changed since the last analyze "
            f"({analyzed:%Y-%m-%d %H:%M} UTC) of {live:,}",
            f"ANALYZE {table}",
        )  # fmt: skip
    return Finding("ok", table, f"statistics fresh ({changed:,} of {live:,} rows changed)", "")


def _no_stats(table: str) -> Finding:
    return Finding("warning", table, "no statistics recorded", f"ANALYZE {table}")


def _parse_at(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.rstrip("Z"))
    except ValueError:
        return None


def _check_state(state: str) -> None:
    if state not in STATES:
        raise ValueError(f"option 'state' must be one of {', '.join(STATES)}, got {state!r}")


def _check_int(name: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"option {name!r} must be an integer from {low} to {high}, got {value!r}")


# `JobState` values and `STATES` must agree: a renamed state would silently vanish.
assert set(STATES) == {s.value for s in JobState}


class StatsStore:
    """Where nodes write their per-minute job statistics (`services.stats`), and where
    old ones are pruned: the `kerrera_job_stats` table of migration 8."""

    def __init__(self, pool: AsyncConnectionPool[Any], prefix: str = "public") -> None:
        self.pool = pool
        self._sql = Statements(check_prefix(prefix))

    async def write(self, rows: list[dict[str, Any]]) -> None:
        """Add `rows` (span, bucket, queue, worker, completed, failed, cancelled, other,
        exec_hist, queue_hist) to what is stored, in one statement."""
        if not rows:
            return
        async with self.pool.connection() as conn:
            await conn.execute(self._sql["stats_upsert"], {"rows": json.dumps(rows)})

    async def prune(self, before: datetime) -> None:
        """Drop statistics of buckets before `before`."""
        async with self.pool.connection() as conn:
            await conn.execute(self._sql["stats_prune"], {"before": before})
