"""More actions (POST only, with the same defences as `actions`): cancel or retry a
workflow, retry / cancel / delete a group of failed jobs after a dry run, and edit a
waiting job. Each checks the permission on the server and emits `web.action`."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import psycopg
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from kerrera.core.errors import ConfigError
from kerrera.core.job import Job
from kerrera.core.options import check_json_object, check_priority, check_queue
from kerrera.core.search import Search
from kerrera.engine.dashboard import Dashboard
from kerrera.web.actions import CHUNK, JOB_ACTIONS, SAMPLE, _act, _choice, _form, _int, audit
from kerrera.web.auth import require
from kerrera.web.render import base_path, page
from kerrera.web.views import shown, user_of, web_of

#: What the errors page may do to a group (a retryable job is "discarded" by cancelling
#: it: it stops being retried, which is what an operator means).
GROUP_ACTIONS = ("retry", "cancel", "delete")
#: States a group's jobs are taken from.
FAILED = ("retryable", "discarded")
#: States of a job that may still be edited (not yet started, or waiting to run again).
EDITABLE = ("available", "scheduled", "retryable", "suspended")


# -- workflows -----------------------------------------------------------------------------
async def workflow_action(request: Request) -> Response:
    """POST `/workflows/<id>/actions`: `cancel` its waiting and running steps, or
    `retry` its failed steps (and those after them)."""
    user, form = await _form(request)
    web = web_of(request)
    _dashboard, live = await web.ready()
    action = _choice(form, "action", ("cancel", "retry"))
    require(user, JOB_ACTIONS[action][0])
    workflow_id: str = request.path_params["workflow_id"]
    handle = web.kerrera.workflow(workflow_id)
    try:
        await handle.status()
    except (ConfigError, psycopg.errors.UndefinedTable):
        raise HTTPException(404, f"There is no workflow {workflow_id!r}.") from None
    if action == "cancel":
        ids = [j.id for j in await handle.cancel() if j.id is not None]
    else:
        ids = list(await handle.retry())
    audit(user, JOB_ACTIONS[action][0], ids, scope="workflow", workflow_id=workflow_id)
    live.poke()
    return RedirectResponse(f"{base_path(request)}/workflows/{workflow_id}", status_code=303)


# -- error groups --------------------------------------------------------------------------
_KINDS = (re.compile(r"^\*\* \(([^)]+)\)"), re.compile(r"^\(([^)]+)\)"),
          re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*)(?::|$)"))  # fmt: skip


def error_kind(job: Job) -> str:
    """The exception type of a job's last error, read as the errors page groups them
    (the last line of a Python traceback, Elixir's `** (Type)`, or `(Cancelled)`)."""
    last = job.errors[-1] if job.errors else None
    text = str(last.get("error", "")) if isinstance(last, dict) else ""
    if text.startswith("Traceback"):
        lines = text.rstrip("\n ").splitlines()
        message = lines[-1] if lines else ""
    else:
        message = text.split("\n", 1)[0]
    for pattern in _KINDS:
        found = pattern.match(message)
        if found:
            return found.group(1)
    return ""


async def group_jobs(dashboard: Dashboard, worker: str, kind: str, cap: int) -> list[Job]:
    """The retryable and discarded jobs of `worker` whose last error is a `kind`, newest
    first, among the newest `sample_limit` failed jobs of that worker per state (the
    sample the errors page groups), at most `cap` of them."""
    search = Search(workers=(worker,))
    out: list[Job] = []
    for state in FAILED:
        seen, older = 0, None
        while seen < dashboard.sample_limit and len(out) < cap:
            size = min(200, dashboard.sample_limit - seen)
            listing = await dashboard.list_jobs(state, search, limit=size, older_than=older)
            seen += len(listing.jobs)
            out += [j for j in listing.jobs if error_kind(j) == kind][: cap - len(out)]
            if listing.older is None:
                break
            older = listing.older
    return out


async def error_action(request: Request) -> Response:
    """POST `/errors/actions`: retry, cancel or delete the failed jobs of one group
    (`worker`, `kind`); a dry run (count and sample) unless `confirm=1`."""
    user, form = await _form(request)
    web = web_of(request)
    dashboard, live = await web.ready()
    action = _choice(form, "do", GROUP_ACTIONS)
    permission, done_word = JOB_ACTIONS[action]
    require(user, permission)
    worker, kind = str(form.get("worker") or ""), str(form.get("kind") or "")
    if not worker:
        raise HTTPException(400, "option 'worker' is required")
    if form.get("confirm") != "1":
        upto = await dashboard.last_id()  # jobs that fail after the dry run are left alone
        jobs = await group_jobs(dashboard, worker, kind, web.bulk_action_limit)
        return page(
            request, "confirm_group.html", user, action=action, worker=worker, kind=kind,
            count=len(jobs), sample=[shown(web, j) for j in jobs[:SAMPLE]], upto=upto,
            limit=web.bulk_action_limit, over=len(jobs) >= web.bulk_action_limit,
        )  # fmt: skip
    upto = _int(form, "upto")
    jobs = await group_jobs(dashboard, worker, kind, web.bulk_action_limit)
    # Only jobs still failed are touched: the public API's guards skip the others.
    ids = sorted(j.id for j in jobs if j.id is not None and j.id <= upto)
    act, acted = _act(request, action), []
    for start in range(0, len(ids), CHUNK):
        acted += [j.id for j in await act(ids[start : start + CHUNK]) if j.id is not None]
    audit(user, permission, acted, scope="error_group", worker=worker, kind=kind)
    live.poke()
    query = urlencode({"done": f"{done_word} {len(acted)} job(s) of {worker} {kind}".strip()})
    return RedirectResponse(f"{base_path(request)}/errors?{query}", status_code=303)


# -- editing a waiting job -----------------------------------------------------------------
async def edit_job_form(request: Request) -> Response:
    """GET `/jobs/<id>/edit`: the form to change a waiting job's args, queue, priority
    and schedule."""
    user = await user_of(request)
    require(user, "update_jobs")
    dashboard, _live = await web_of(request).ready()
    job = await _editable(dashboard, request.path_params["job_id"])
    return page(request, "edit_job.html", user, job=job, form=_form_of(job), problem=None)


def _form_of(job: Job) -> dict[str, str]:
    at = job.scheduled_at
    return {
        "args": json.dumps(job.args, indent=2, sort_keys=True, ensure_ascii=False),
        "queue": job.queue, "priority": str(job.priority),
        "scheduled_at": at.strftime("%Y-%m-%dT%H:%M:%S") if at else "",
    }  # fmt: skip


async def _editable(dashboard: Dashboard, job_id: int) -> Job:
    job = await dashboard.job(job_id)
    if job is None:
        raise HTTPException(404, f"There is no job {job_id} (it may have been pruned).")
    if job.state.value not in EDITABLE:
        raise HTTPException(
            409,
            f"Job {job_id} is {job.state.value}: only {', '.join(EDITABLE)} jobs can be edited.",
        )
    return job


def parse_edit(given: dict[str, str]) -> dict[str, Any]:
    """The changes the form asks for, each checked (ConfigError naming the option)."""
    try:
        args = json.loads(given["args"] or "{}")
    except json.JSONDecodeError as exc:
        raise ConfigError(f"option 'args' must be a JSON object: {exc.msg}") from None
    priority = given["priority"]
    if not priority.isdigit():
        raise ConfigError(f"option 'priority' must be an integer 0..9, got {priority!r}")
    when = given["scheduled_at"]
    try:
        at = datetime.fromisoformat(when) if when else None
    except ValueError:
        raise ConfigError(
            f"option 'scheduled_at' must be a date and time (UTC), got {when!r}"
        ) from None
    if at is not None and at.tzinfo is not None:
        at = at.astimezone(UTC).replace(tzinfo=None)
    if at is not None and abs(at - datetime.now(UTC).replace(tzinfo=None)) > timedelta(days=3660):
        raise ConfigError("option 'scheduled_at' must be within ten years of now")
    return {
        "args": check_json_object(args, "args"), "queue": check_queue(given["queue"]),
        "priority": check_priority(int(priority)), "scheduled_at": at,
    }  # fmt: skip


async def edit_job(request: Request) -> Response:
    """POST `/jobs/<id>/edit`: save the changes in one guarded statement (the job must
    still be waiting), then show the job."""
    user, form = await _form(request)
    require(user, "update_jobs")
    web = web_of(request)
    dashboard, live = await web.ready()
    job_id: int = request.path_params["job_id"]
    job = await _editable(dashboard, job_id)
    given = {
        k: str(form.get(k) or "").strip() for k in ("args", "queue", "priority", "scheduled_at")
    }
    try:
        changes = parse_edit(given)
    except ConfigError as exc:
        return page(request, "edit_job.html", user, 400, job=job, form=given, problem=str(exc))
    # Only what the operator changed is written: a retryable job whose schedule is left
    # alone stays retryable (a new time makes it scheduled, or available if past).
    at = job.scheduled_at.replace(microsecond=0) if job.scheduled_at else None
    current = {"args": job.args, "queue": job.queue, "priority": job.priority, "scheduled_at": at}
    changes = {k: v for k, v in changes.items() if v is not None and v != current[k]}
    if not changes:
        return RedirectResponse(f"{base_path(request)}/jobs/{job_id}", status_code=303)
    saved = await dashboard.update_job(job_id, **changes)
    if saved is None:
        problem = (
            "The job is no longer waiting (it started or finished meanwhile): nothing was changed."
        )
        return page(request, "edit_job.html", user, 409, job=job, form=given, problem=problem)
    audit(user, "update_jobs", [job_id], scope="job", changed=sorted(changes))
    live.poke()
    return RedirectResponse(f"{base_path(request)}/jobs/{job_id}", status_code=303)
