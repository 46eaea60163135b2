"""The pages (GET): jobs with counts, search and keyset paging, one job, queues, the
event stream and search suggestions. Nothing here changes data."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse

from kerrera.core.job import Job
from kerrera.core.search import Search, SearchError, format_search, parse_search
from kerrera.engine.dashboard import STATES
from kerrera.web.auth import User, resolve
from kerrera.web.render import base_path, moment, page
from kerrera.web.series import sparklines

if TYPE_CHECKING:
    from kerrera.web.app import Web

#: Headers of the event stream; `X-Accel-Buffering: no` stops nginx from holding events.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
#: Fields the search box suggests values for.
SUGGEST_FIELDS = ("queues", "workers", "tags", "nodes", "args", "meta")


def web_of(request: Request) -> Web:
    """The dashboard's shared state (the innermost Starlette app is the dashboard)."""
    web: Web = request.app.state.web
    return web


async def user_of(request: Request) -> User:
    """Resolve the request's user (401/403 raised by the resolver or for None)."""
    return await resolve(web_of(request).resolver, request)


async def home(request: Request) -> Response:
    """`/`: the jobs page."""
    await user_of(request)
    return RedirectResponse(f"{base_path(request)}/jobs", status_code=303)


def int_param(request: Request, name: str) -> int | None:
    """An optional integer query parameter; 400 naming it when it is not one."""
    text = request.query_params.get(name)
    if text is None or text == "":
        return None
    if not text.isdigit() or len(text) > 18:
        raise HTTPException(400, f"option '{name}' must be a job id, got {text!r}")
    return int(text)


def state_param(request: Request, default: str = "available") -> str:
    """The `state` query parameter, one of the job states; 400 otherwise."""
    state = request.query_params.get("state") or default
    if state not in STATES:
        raise HTTPException(
            400, f"option 'state' must be one of {', '.join(STATES)}, got {state!r}"
        )
    return state


def search_param(text: str) -> tuple[Search | None, str | None]:
    """The parsed search, or the parser's message when the text is not a search."""
    try:
        return parse_search(text), None
    except SearchError as exc:
        return None, str(exc)


def shown(web: Web, job: Job) -> dict[str, Any]:
    """A job's args and meta as they may be displayed (after the redaction hooks)."""
    args = web.redact_args(job, job.args) if web.redact_args else job.args
    meta = web.redact_meta(job, job.meta) if web.redact_meta else job.meta
    return {"job": job, "args": args, "meta": meta}


async def jobs_page(request: Request) -> Response:
    """`/jobs?state=&q=&older=&newer=`: counts per state, one state's jobs, a search."""
    user = await user_of(request)
    web = web_of(request)
    dashboard, live = await web.ready()
    state = state_param(request)
    text = request.query_params.get("q", "").strip()
    search, problem = search_param(text)
    older, newer = int_param(request, "older"), int_param(request, "newer")
    counts = await dashboard.state_counts(search)
    listing = None
    if problem is None:
        listing = await dashboard.list_jobs(
            state, search, limit=web.page_size, older_than=older, newer_than=newer
        )
    context: dict[str, Any] = {
        "state": state,
        "states": STATES,
        "counts": counts,
        "q": format_search(search) if search is not None and not search.empty else text,
        "problem": problem,
        "listing": listing,
        "rows": [shown(web, job) for job in listing.jobs] if listing else [],
        "live": live.connected,
        "limit": web.bulk_action_limit,
        "done": request.query_params.get("done", "")[:200],
    }
    partial = request.headers.get("x-kerrera-partial") == "1"
    return page(request, "_jobs_live.html" if partial else "jobs.html", user, **context)


async def job_page(request: Request) -> Response:
    """`/jobs/<id>`: args, meta, output, progress, errors, timeline, related jobs."""
    user = await user_of(request)
    web = web_of(request)
    dashboard, _live = await web.ready()
    job_id: int = request.path_params["job_id"]
    job = await dashboard.job(job_id)
    if job is None:
        raise HTTPException(404, f"There is no job {job_id} (it may have been pruned).")
    others = await dashboard.worker_jobs(job.worker, exclude=job_id, limit=10)
    partial = request.headers.get("x-kerrera-partial") == "1"
    return page(
        request, "_job_live.html" if partial else "job.html", user,
        **shown(web, job), others=others, timeline=timeline(job),
    )  # fmt: skip


def timeline(job: Job) -> list[tuple[str, datetime | None, str]]:
    """(what, when, detail) of a job's life, oldest first: inserted, scheduled, each
    failed attempt (from its errors), the current attempt, and how it finished."""
    events: list[tuple[str, datetime | None, str]] = [
        ("inserted", job.inserted_at, f"queue {job.queue}")
    ]
    if job.scheduled_at and job.inserted_at and job.scheduled_at > job.inserted_at:
        events.append(("scheduled", job.scheduled_at, ""))
    for error in job.errors:
        if isinstance(error, dict):
            lines = str(error.get("error", "")).strip().splitlines()
            what = f"attempt {error.get('attempt', '?')} failed"
            events.append((what, moment(error.get("at")), lines[-1] if lines else ""))
    if job.attempted_at is not None:
        node = job.attempted_by[0] if job.attempted_by else ""
        events.append((f"attempt {job.attempt} started", job.attempted_at, f"node {node}"))
    ends = (
        ("completed", job.completed_at),
        ("cancelled", job.cancelled_at),
        ("discarded", job.discarded_at),
    )
    events += [(what, at, "") for what, at in ends if at is not None]
    return sorted(events, key=lambda e: e[1] or datetime.min)


async def queues_page(request: Request) -> Response:
    """`/queues`: per queue its counts, and per node its limit, running and paused."""
    user = await user_of(request)
    web = web_of(request)
    dashboard, _live = await web.ready()
    counts = {qc.queue: qc.counts for qc in await dashboard.queue_counts()}
    nodes: dict[str, list[dict[str, Any]]] = {}
    for info in await web.kerrera.check_all_queues(fresh=0.3):
        nodes.setdefault(str(info["queue"]), []).append(info)
    names = sorted(set(counts) | set(nodes))
    queues = [{"name": n, "counts": counts.get(n, {}), "nodes": nodes.get(n, [])} for n in names]
    sparks = await sparklines(dashboard)
    partial = request.headers.get("x-kerrera-partial") == "1"
    template = "_queues_live.html" if partial else "queues.html"
    return page(request, template, user, queues=queues, sparks=sparks)


async def errors_page(request: Request) -> Response:
    """`/errors`: failed jobs grouped by worker and exception type."""
    user = await user_of(request)
    dashboard, _live = await web_of(request).ready()
    groups = await dashboard.error_groups(limit=100)
    partial = request.headers.get("x-kerrera-partial") == "1"
    template = "_errors_live.html" if partial else "errors.html"
    done = request.query_params.get("done", "")[:200]
    return page(request, template, user, groups=groups, sample=dashboard.sample_limit, done=done)


async def events(request: Request) -> Response:
    """`/events`: the server-sent events every page listens to (see `LiveFeed`)."""
    await user_of(request)
    _dashboard, live = await web_of(request).ready()
    return StreamingResponse(live.stream(), media_type="text/event-stream", headers=SSE_HEADERS)


async def suggest(request: Request) -> Response:
    """`/suggest?field=queues&prefix=me`: values seen in recent jobs, as JSON."""
    await user_of(request)
    field = request.query_params.get("field", "")
    if field not in SUGGEST_FIELDS:
        raise HTTPException(400, f"option 'field' must be one of {', '.join(SUGGEST_FIELDS)}")
    dashboard, _live = await web_of(request).ready()
    found = await dashboard.suggest(field, request.query_params.get("prefix", "")[:100])
    return JSONResponse({"field": field, "values": found})
