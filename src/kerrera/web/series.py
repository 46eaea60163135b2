"""Time bins of the charts, and the queues page's sparklines, from `Dashboard.chart`
(the per-minute statistics nodes write as jobs finish; never `oban_jobs`)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import psycopg
from markupsafe import Markup

from kerrera.engine.dashboard import Dashboard
from kerrera.engine.migrations.web import SPANS
from kerrera.web.svg import sparkline

#: Points a chart asks for; the stored resolution (1 or 15 minutes) may give fewer.
POINTS = 60


def bins(window: timedelta, now: datetime, points: int = POINTS) -> tuple[list[datetime], int]:
    """The bin starts `Dashboard.chart` uses for `window` ending at `now`, and the bin
    length in seconds (the same arithmetic, so that empty bins can be filled with 0)."""
    wanted = window.total_seconds() / points
    span = SPANS[-1] if wanted > 300 else SPANS[0]
    step = max(span, round(wanted / span) * span)
    epoch = datetime(1970, 1, 1)
    since = epoch + timedelta(seconds=(now - window - epoch).total_seconds() // span * span)
    count = max(1, math.ceil((now - since).total_seconds() / step))
    return [since + timedelta(seconds=step * k) for k in range(count)], step


async def sparklines(dashboard: Dashboard) -> dict[str, Markup]:
    """Per queue, a sparkline of the jobs finished per bin over the last hour (empty when
    the statistics table is missing: the queues page does without)."""
    now = datetime.now(UTC).replace(tzinfo=None)
    window = timedelta(hours=1)
    starts, _step = bins(window, now, 30)
    try:
        found = await dashboard.chart(window=window, by="queue", points=30, now=now)
    except psycopg.errors.UndefinedTable:
        return {}
    index = {at: i for i, at in enumerate(starts)}
    values: dict[str, list[float]] = {}
    for p in found:
        if p.at in index:
            row = values.setdefault(p.key, [0.0] * len(starts))
            row[index[p.at]] += p.completed + p.failed + p.cancelled + p.other
    return {queue: sparkline(row) for queue, row in values.items()}
