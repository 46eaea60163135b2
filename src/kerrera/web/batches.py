"""The batches pages (GET, read-only): the newest batches with their counts, and one
batch: its counts, open or sealed, the callbacks declared and those fired (with the
callback jobs), and links to its jobs through the search `meta.batch_id:<id>`."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import psycopg
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from kerrera.core.errors import ConfigError
from kerrera.core.job import Job
from kerrera.core.search import PathFilter, Search, format_search
from kerrera.engine.compose import BatchCounts, recent_batches
from kerrera.engine.dashboard import STATES, Count
from kerrera.web.render import page
from kerrera.web.views import user_of, web_of

#: Batches the list shows.
BATCHES = 50
#: Callback jobs the page shows per state (a batch has at most six callbacks, each
#: inserted once; more only if someone copied its meta).
CALLBACK_JOBS = 10
MISSING = "Batches need Kerrera's batch tables: run `kerrera migrate`."


def jobs_link(batch_id: str, state: str | None = None) -> str:
    """The query string of the jobs page searching the batch's jobs (members and
    callbacks both carry `meta.batch_id`)."""
    search = format_search(Search(meta=(PathFilter(("batch_id",), (batch_id,)),)))
    params = {"state": state, "q": search} if state else {"q": search}
    return urlencode(params)


def progress(batch: BatchCounts) -> int:
    """Percent of the members in a final state (for the bar)."""
    done = batch.completed + batch.cancelled + batch.discarded
    return min(100, round(100 * done / batch.total)) if batch.total else 0


async def batches_page(request: Request) -> Response:
    """`/batches`: the newest batches, newest first."""
    user = await user_of(request)
    web = web_of(request)
    dashboard, _live = await web.ready()
    problem, rows = None, []
    try:
        rows = await recent_batches(dashboard.pool, web.kerrera.config.prefix, limit=BATCHES)
    except psycopg.errors.UndefinedTable:
        problem = MISSING
    listed = [{"b": b, "progress": progress(b), "jobs": jobs_link(b.batch_id)} for b in rows]
    partial = request.headers.get("x-kerrera-partial") == "1"
    template = "_batches_live.html" if partial else "batches.html"
    return page(request, template, user, batches=listed, problem=problem)


async def batch_page(request: Request) -> Response:
    """`/batches/<id>`: one batch's counts, callbacks and links to its jobs."""
    user = await user_of(request)
    web = web_of(request)
    dashboard, _live = await web.ready()
    batch_id: str = request.path_params["batch_id"]
    try:
        batch = await web.kerrera.batch(batch_id).status()
    except (ConfigError, LookupError, psycopg.errors.UndefinedTable):
        raise HTTPException(404, f"There is no batch {batch_id!r}.") from None
    member = PathFilter(("batch_id",), (batch.batch_id,))
    counts: dict[str, Count] = await dashboard.state_counts(Search(meta=(member,)))
    fired: dict[str, list[Job]] = {name: [] for name in batch.fired}
    if batch.fired:
        # Callback jobs carry the batch id and their name in meta (containment index).
        named = PathFilter(("callback",), batch.fired)
        search = Search(meta=(member, named))
        for state in STATES:
            if counts[state].value or not counts[state].exact:
                found = await dashboard.list_jobs(state, search, limit=CALLBACK_JOBS)
                for job in found.jobs:
                    fired.setdefault(str(job.meta.get("callback", "")), []).append(job)
    context: dict[str, Any] = {
        "batch": batch,
        "progress": progress(batch),
        "counts": counts,
        "states": STATES,
        "fired": fired,
        "jobs": jobs_link(batch.batch_id),
        "state_links": {s: jobs_link(batch.batch_id, s) for s in STATES},
    }
    partial = request.headers.get("x-kerrera-partial") == "1"
    return page(request, "_batch_live.html" if partial else "batch.html", user, **context)
