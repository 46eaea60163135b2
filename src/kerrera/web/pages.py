"""More pages (GET): charts from the stored job statistics, workflows (a list, and one
as a graph with live step states) and cron entries. Nothing here changes data."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any

import psycopg
from markupsafe import Markup
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from kerrera.core.crontab import CronExpression, next_tick, ticks
from kerrera.core.errors import ConfigError
from kerrera.engine.dashboard import StatPoint
from kerrera.web import graph
from kerrera.web.cronwords import describe
from kerrera.web.render import base_path, page
from kerrera.web.series import POINTS, bins
from kerrera.web.svg import Series, legend, line_chart
from kerrera.web.views import user_of, web_of

if TYPE_CHECKING:
    from kerrera.web.app import Web

#: Chart windows the page offers (the first is the narrowest the issue asks for).
WINDOWS = {
    "5m": timedelta(minutes=5),
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "24h": timedelta(hours=24),
}
CHART_BY = ("all", "queue", "worker")
OUTCOMES = ("completed", "failed", "cancelled", "other")
PERCENTILES = ("p50", "p95", "p99")
#: Series one chart draws at most (the busiest ones); the table lists them all.
MAX_SERIES = 8
#: Workflows the list shows.
WORKFLOWS = 50


def _choice(request: Request, name: str, choices: tuple[str, ...], default: str) -> str:
    value = request.query_params.get(name) or default
    if value not in choices:
        raise HTTPException(
            400, f"option '{name}' must be one of {', '.join(choices)}, got {value!r}"
        )
    return value


@dataclass(frozen=True, slots=True)
class Chart:
    """One drawn chart of the page."""

    title: str
    svg: Markup
    legend: Markup


def charts_of(
    found: list[StatPoint], starts: list[datetime], step: int, by: str, pct: str
) -> tuple[list[Chart], list[dict[str, Any]]]:
    """The page's three charts (throughput, execution time, queue time) and the totals
    per series, from the points `Dashboard.chart` returned."""
    index = {at: i for i, at in enumerate(starts)}
    per_minute = 60 / step
    labels = [at.strftime("%H:%M") for at in starts]
    keyed: dict[str, list[StatPoint | None]] = {}
    for point in found:
        if point.at in index:
            keyed.setdefault(point.key, [None] * len(starts))[index[point.at]] = point
    totals = sorted(
        ({"key": key or "all jobs", "_row": row,
          **{f: sum(getattr(p, f) for p in row if p) for f in OUTCOMES}}
         for key, row in keyed.items()),
        key=lambda t: -(t["completed"] + t["failed"] + t["cancelled"] + t["other"]),
    )  # fmt: skip
    if by == "all":
        row = totals[0]["_row"] if totals else [None] * len(starts)
        throughput = [
            Series(name, [getattr(p, name) * per_minute if p else 0 for p in row])
            for name in ("completed", "failed", "cancelled")
        ]
        execution = [
            Series(q, [getattr(p.exec_ms, q) if p else None for p in row]) for q in PERCENTILES
        ]
        queueing = [
            Series(q, [getattr(p.queue_ms, q) if p else None for p in row]) for q in PERCENTILES
        ]
    else:
        top = totals[:MAX_SERIES]
        throughput = [
            Series(t["key"], [(p.completed + p.failed + p.cancelled + p.other) * per_minute
                              if p else 0 for p in t["_row"]])
            for t in top
        ]  # fmt: skip
        execution = [
            Series(t["key"], [getattr(p.exec_ms, pct) if p else None for p in t["_row"]])
            for t in top
        ]
        queueing = [
            Series(t["key"], [getattr(p.queue_ms, pct) if p else None for p in t["_row"]])
            for t in top
        ]
    which = "" if by == "all" else f" ({pct})"
    charts = [
        Chart(title, line_chart(series, labels, unit=unit, title=title), legend(series))
        for title, series, unit in (
            ("Throughput (jobs finished per minute)", throughput, ""),
            (f"Execution time{which}", execution, "ms"),
            (f"Queue time{which}", queueing, "ms"),
        )
    ]
    for t in totals:
        del t["_row"]
    return charts, totals


async def charts_page(request: Request) -> Response:
    """`/charts?window=1h&by=queue&pct=p95&queue=&worker=`: throughput, execution and
    queue time, read from the per-minute statistics the nodes write (never `oban_jobs`)."""
    user = await user_of(request)
    dashboard, _live = await web_of(request).ready()
    window = _choice(request, "window", tuple(WINDOWS), "1h")
    by = _choice(request, "by", CHART_BY, "all")
    pct = _choice(request, "pct", PERCENTILES, "p95")
    queue = request.query_params.get("queue", "").strip()[:127]
    worker = request.query_params.get("worker", "").strip()[:255]
    now = datetime.now(UTC).replace(tzinfo=None)
    starts, step = bins(WINDOWS[window], now)
    problem = None
    charts: list[Chart] = []
    totals: list[dict[str, Any]] = []
    try:
        found = await dashboard.chart(
            window=WINDOWS[window], by=by, queues=[queue] if queue else [],
            workers=[worker] if worker else [], points=POINTS, now=now,
        )  # fmt: skip
        charts, totals = charts_of(found, starts, step, by, pct)
    except psycopg.errors.UndefinedTable:
        problem = "Charts need the statistics table of migration 8: run `kerrera migrate`."
    partial = request.headers.get("x-kerrera-partial") == "1"
    context: dict[str, Any] = {
        "windows": tuple(WINDOWS), "window": window, "by": by, "bys": CHART_BY, "pct": pct,
        "pcts": PERCENTILES, "queue": queue, "worker": worker, "charts": charts,
        "totals": totals, "problem": problem, "step": step,
    }  # fmt: skip
    return page(request, "_charts_live.html" if partial else "charts.html", user, **context)


# -- workflows -----------------------------------------------------------------------------
async def workflows_page(request: Request) -> Response:
    """`/workflows`: the newest workflows with their steps per state."""
    user = await user_of(request)
    web = web_of(request)
    await web.ready()
    problem, rows = None, []
    try:
        rows = await web.kerrera.workflows(WORKFLOWS)
    except psycopg.errors.UndefinedTable:
        problem = "Workflows need Kerrera's workflow tables: run `kerrera migrate`."
    listed = [
        {
            "id": wid,
            "name": name,
            "inserted_at": at,
            "states": states,
            "total": sum(states.values()),
        }
        for wid, name, at, states in rows
    ]
    partial = request.headers.get("x-kerrera-partial") == "1"
    template = "_workflows_live.html" if partial else "workflows.html"
    return page(request, template, user, workflows=listed, problem=problem)


async def workflow_page(request: Request) -> Response:
    """`/workflows/<id>`: one workflow as a graph with the live state of every step."""
    user = await user_of(request)
    web = web_of(request)
    await web.ready()
    workflow_id: str = request.path_params["workflow_id"]
    handle = web.kerrera.workflow(workflow_id)
    try:
        status = await handle.status()
    except (ConfigError, psycopg.errors.UndefinedTable):
        raise HTTPException(404, f"There is no workflow {workflow_id!r}.") from None
    steps = graph.layout(await handle.jobs())
    drawn = graph.draw(steps, base_path(request)) if len(steps) <= graph.MAX_NODES else None
    partial = request.headers.get("x-kerrera-partial") == "1"
    return page(
        request, "_workflow_live.html" if partial else "workflow.html", user,
        status=status, steps=steps, drawn=drawn, max_nodes=graph.MAX_NODES,
        names={i: s.name for i, s in enumerate(steps)},
    )  # fmt: skip


# -- cron ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CronRow:
    """One cron entry as the page shows it."""

    name: str
    expression: str
    words: str
    timezone: str
    worker: str
    last_tick: datetime | None
    next_tick: datetime | None
    evaluated: datetime | None
    known: bool  # in this node's crontab (else only in the cluster's table)
    overdue: datetime | None = None  # a tick owed since then: is a leader evaluating?


def cron_rows(
    web: Web, table: list[tuple[str, datetime, datetime]], now: datetime
) -> list[CronRow]:
    """The cluster's entries (the cron table) joined with this node's crontab, which
    alone knows expressions and time zones of entries; for the others the expression is
    read back from a default entry name (`worker expression`) when it is one."""
    config = {} if web.own else {e.name: e for e in web.kerrera.config.crontab}
    seen = {name: (last, updated) for name, last, updated in table}
    out = []
    for name in sorted(set(seen) | set(config)):
        entry = config.get(name)
        last, updated = seen.get(name, (None, None))
        if entry is not None:
            expr, zone, worker = entry.expression, entry.zone, entry.worker.name
            zone_name = str(getattr(zone, "key", zone))
        else:  # the table does not say; entries without a timezone run in UTC
            expr, zone, worker = _expression_in_name(name), UTC, name.split(" ")[0]
            zone_name = "UTC (assumed)" if expr is not None else "?"
        words = (describe(expr.text) or expr.text) if expr else ""
        owed = _next(expr, zone, last or now)
        # The leader evaluates every minute: a tick owed for longer means none does.
        overdue = owed if owed is not None and owed < now - timedelta(minutes=2) else None
        out.append(
            CronRow(
                name, expr.text if expr else "?", words, zone_name, worker,
                _last_tick(expr, zone, last), _next(expr, zone, now) if overdue else owed,
                updated, entry is not None, overdue,
            )
        )  # fmt: skip
    return out


def _expression_in_name(name: str) -> CronExpression | None:
    words = name.split(" ")
    for tail in (words[1:], words[1:-1]):  # `worker expr` or `worker expr digest`
        if tail:
            try:
                return CronExpression.parse(" ".join(tail))
            except ConfigError:
                continue
    return None


def _last_tick(
    expr: CronExpression | None, zone: tzinfo, evaluated: datetime | None
) -> datetime | None:
    """The last minute the entry fired at or before its last evaluation (8 days back)."""
    if expr is None or evaluated is None:
        return None
    until = evaluated.replace(tzinfo=UTC)
    # Widening windows: a frequent entry is found in the last hour without listing
    # the ~11,000 minutes of eight days.
    for back in (timedelta(hours=1), timedelta(days=1), timedelta(days=8)):
        found = ticks(expr, zone, until - back, until)
        if found:
            return found[-1][0].replace(tzinfo=None)
    return None


def _next(expr: CronExpression | None, zone: tzinfo, after: datetime) -> datetime | None:
    if expr is None:
        return None
    found = next_tick(expr, zone, after.replace(tzinfo=UTC))
    return None if found is None else found.astimezone(UTC).replace(tzinfo=None)


async def cron_page(request: Request) -> Response:
    """`/cron`: every entry of the cluster, in words, with its last and next tick."""
    user = await user_of(request)
    web = web_of(request)
    dashboard, _live = await web.ready()
    now = datetime.now(UTC).replace(tzinfo=None)
    table = await dashboard.cron_entries()
    rows = cron_rows(web, table, now)
    partial = request.headers.get("x-kerrera-partial") == "1"
    return page(
        request, "_cron_live.html" if partial else "cron.html", user, rows=rows, own=web.own
    )
