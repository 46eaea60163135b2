"""The actions (POST only): retry, cancel or delete jobs (one, a selection, or all that
match a search, after a dry run), and queue commands. Each re-checks the user's
permission and the cross-site defences, goes through Kerrera's public API (so guards,
notifications and telemetry apply), and emits `web.action` naming the user, the action
and the jobs: the audit log."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode

from markupsafe import Markup
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from kerrera import telemetry
from kerrera.core.errors import ConfigError
from kerrera.core.job import Job, JobState
from kerrera.core.options import (
    check_json_object,
    check_max_attempts,
    check_priority,
    check_queue,
    check_schedule,
    check_tags,
)
from kerrera.engine.dashboard import STATES
from kerrera.web.auth import User, require
from kerrera.web.render import base_path, page, render
from kerrera.web.security import TOKEN_FIELD, check_post, same_site
from kerrera.web.views import search_param, shown, user_of, web_of

#: The telemetry event every action emits.
EVENT = "web.action"
#: Job actions, each with the permission it needs and the past tense the page shows.
JOB_ACTIONS = {
    "retry": ("retry_jobs", "retried"),
    "cancel": ("cancel_jobs", "cancelled"),
    "delete": ("delete_jobs", "deleted"),
}
#: Queue commands and the permission each needs.
QUEUE_ACTIONS = {
    "pause": "pause_queues",
    "resume": "pause_queues",
    "scale": "scale_queues",
    "start": "stop_queues",
    "stop": "stop_queues",
}
#: Ids per call to the public API: each call is one short transaction.
CHUNK = 500
#: Jobs a dry run shows as a sample.
SAMPLE = 10
#: Bytes of a form at most (a selection of 10,000 ids is about 200 kB).
MAX_FORM = 1_000_000


async def _form(request: Request) -> tuple[User, FormData]:
    """The checked POST: same site, right token, a known user. Forms are parsed here
    (url-encoded only, bounded), which needs no multipart parser."""
    if not same_site(request):  # before anything else: a cross-site POST learns nothing
        raise HTTPException(403, "Cross-site request refused.")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise HTTPException(415, "Actions take a url-encoded form.")
    body = b""
    async for part in request.stream():
        body += part
        if len(body) > MAX_FORM:
            raise HTTPException(413, "Form too large.")
    pairs: list[tuple[str, str | UploadFile]] = list(
        parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    )
    form = FormData(pairs)
    token = form.get(TOKEN_FIELD)
    await check_post(request, token if isinstance(token, str) else None)
    return await user_of(request), form


def audit(user: User, action: str, ids: Sequence[int], **details: Any) -> None:
    """Emit the audit event of one action."""
    telemetry.execute(
        EVENT, {"count": len(ids)},
        {"user": user.name, "action": action, "job_ids": list(ids), **details},
    )  # fmt: skip


def _choice(form: FormData, name: str, choices: Sequence[str]) -> str:
    value = form.get(name)
    if not isinstance(value, str) or value not in choices:
        raise HTTPException(
            400, f"option '{name}' must be one of {', '.join(choices)}, got {value!r}"
        )
    return value


def _ids(form: FormData, limit: int) -> list[int]:
    texts = [v for v in form.getlist("ids") if isinstance(v, str)]
    if not texts:
        raise HTTPException(400, "option 'ids': select at least one job")
    if len(texts) > limit:
        raise HTTPException(
            400, f"option 'ids': at most {limit:,} jobs per action (bulk_action_limit)"
        )
    if not all(t.isdigit() and len(t) <= 18 for t in texts):
        raise HTTPException(400, "option 'ids' must hold job ids")
    return sorted({int(t) for t in texts})


def _int(form: FormData, name: str) -> int:
    value = form.get(name)
    if not isinstance(value, str) or not value.isdigit() or len(value) > 18:
        raise HTTPException(400, f"option '{name}' must be a non-negative integer, got {value!r}")
    return int(value)


def _act(request: Request, action: str) -> Callable[[Sequence[int]], Awaitable[list[Job]]]:
    kerrera = web_of(request).kerrera
    calls: dict[str, Callable[[Sequence[int]], Awaitable[list[Job]]]] = {
        "retry": kerrera.retry_job, "cancel": kerrera.cancel_job, "delete": kerrera.delete_job,
    }  # fmt: skip
    return calls[action]


async def bulk_action(request: Request) -> Response:
    """POST `/jobs/actions`: a dry run (count and sample) unless `confirm=1`, then the
    action in chunks. `do` is `<action>:<scope>`: `retry:selected` acts on `ids`;
    `retry:search` on every job of `state` matching `q` that existed at the dry run
    (`upto`), at most `bulk_action_limit` of them."""
    user, form = await _form(request)
    web = web_of(request)
    dashboard, _live = await web.ready()
    action, _, scope = str(form.get("do") or "").partition(":")
    if action not in JOB_ACTIONS or scope not in ("selected", "search"):
        choices = [f"{a}:{s}" for a in JOB_ACTIONS for s in ("selected", "search")]
        raise HTTPException(400, f"option 'do' must be one of {', '.join(choices)}")
    permission, done_word = JOB_ACTIONS[action]
    require(user, permission)
    state = _choice(form, "state", STATES)
    text = str(form.get("q") or "").strip()
    confirm = form.get("confirm") == "1"
    back = {"state": state, **({"q": text} if text else {})}
    if scope == "selected":
        ids = _ids(form, web.bulk_action_limit)
        if not confirm:
            sample = [j for j in [await dashboard.job(i) for i in ids[:SAMPLE]] if j]
            return _dry_run(request, user, action, scope, back, len(ids), "", ids, sample, 0)
        details: dict[str, Any] = {"scope": scope}
    else:
        search, problem = search_param(text)
        if problem is not None:
            raise HTTPException(400, f"option 'q': {problem}")
        cap = web.bulk_action_limit
        if not confirm:
            upto = await dashboard.last_id()
            count = await dashboard.count_matching(state, search, upto_id=upto, cap=cap)
            first = await dashboard.match_ids(state, search, after_id=0, upto_id=upto, limit=SAMPLE)
            sample = [j for j in [await dashboard.job(i) for i in first] if j]
            label = count.label if count.exact else f"more than {cap:,}"
            return _dry_run(
                request, user, action, scope, back, count.value, label, [], sample, upto
            )
        upto, after, ids = _int(form, "upto"), 0, []
        while len(ids) < cap:
            chunk = await dashboard.match_ids(
                state, search, after_id=after, upto_id=upto, limit=min(CHUNK, cap - len(ids))
            )
            if not chunk:
                break
            ids += chunk
            after = chunk[-1]
        details = {"scope": scope, "search": text, "state": state}
    run = Run(request, user, action, ids, back, details)
    if len(ids) > CHUNK:  # long enough to show its progress as it goes
        return StreamingResponse(run.progress_page(), media_type="text/html; charset=utf-8")
    async for _done in run.chunks():
        pass
    query = urlencode({**back, "done": f"{done_word} {len(run.acted)} job(s)"})
    return RedirectResponse(f"{base_path(request)}/jobs?{query}", status_code=303)


class Run:
    """One confirmed bulk action: its chunks, its audit event, its progress page."""

    def __init__(
        self, request: Request, user: User, action: str, ids: list[int],
        back: dict[str, str], details: dict[str, Any],
    ) -> None:  # fmt: skip
        self.request, self.user, self.action, self.ids = request, user, action, ids
        self.back, self.details = back, details
        self.acted: list[int] = []

    async def chunks(self) -> AsyncIterator[int]:
        """Act chunk by chunk, yielding how many ids are done; audit what was changed,
        also when the client goes away midway (the rest is then left alone)."""
        act = _act(self.request, self.action)
        try:
            for start in range(0, len(self.ids), CHUNK):
                changed = await act(self.ids[start : start + CHUNK])
                self.acted += [j.id for j in changed if j.id is not None]
                yield min(start + CHUNK, len(self.ids))
        finally:
            audit(self.user, JOB_ACTIONS[self.action][0], self.acted, **self.details)
            live = web_of(self.request).live
            if live is not None:
                live.poke()

    async def progress_page(self) -> AsyncIterator[str]:
        """A page written as the action goes: one line per chunk, then the result."""
        head, _tail = self._render(None).split(_ROWS)
        yield head
        word = JOB_ACTIONS[self.action][1]
        async for done in self.chunks():
            yield f"<li>{word} {len(self.acted):,} ({done:,} of {len(self.ids):,} looked at)</li>\n"
        yield self._render(f"{word} {len(self.acted):,} job(s)").split(_ROWS)[1]

    def _render(self, result: str | None) -> str:
        return render(
            self.request, "progress.html", self.user, action=self.action,
            total=len(self.ids), back=self.back, result=result, rows=Markup(_ROWS),
        )  # fmt: skip


#: Where a progress page's lines go.
_ROWS = "<!--rows-->"


async def _in_chunks(
    act: Callable[[Sequence[int]], Awaitable[list[Job]]], ids: Sequence[int]
) -> list[int]:
    """Run `act` over `ids` one chunk at a time; the ids of the jobs it changed."""
    changed: list[int] = []
    for start in range(0, len(ids), CHUNK):
        changed += [j.id for j in await act(ids[start : start + CHUNK]) if j.id is not None]
    return changed


def _dry_run(
    request: Request, user: User, action: str, scope: str, back: dict[str, str],
    count: int, label: str, ids: list[int], sample: list[Job], upto: int,
) -> Response:  # fmt: skip
    web = web_of(request)
    return page(
        request, "confirm.html", user, action=action, scope=scope, back=back,
        count=count, label=label or f"{count:,}", ids=ids, upto=upto,
        sample=[shown(web, job) for job in sample], limit=web.bulk_action_limit,
        over=count > web.bulk_action_limit,
    )  # fmt: skip


async def job_action(request: Request) -> Response:
    """POST `/jobs/<id>/actions`: retry, cancel or delete one job, at once."""
    user, form = await _form(request)
    web = web_of(request)
    _dashboard, live = await web.ready()
    action = _choice(form, "action", tuple(JOB_ACTIONS))
    permission, _done = JOB_ACTIONS[action]
    require(user, permission)
    job_id: int = request.path_params["job_id"]
    started = time.monotonic()
    acted = await _in_chunks(_act(request, action), [job_id])
    audit(user, permission, acted, scope="job", duration=time.monotonic() - started)
    live.poke()
    where = "/jobs" if action == "delete" and acted else f"/jobs/{job_id}"
    return RedirectResponse(f"{base_path(request)}{where}", status_code=303)


async def queue_action(request: Request) -> Response:
    """POST `/queues/actions`: pause, resume, scale, start or stop a queue on every node,
    or on `node` when given."""
    user, form = await _form(request)
    web = web_of(request)
    _dashboard, live = await web.ready()
    action = _choice(form, "action", tuple(QUEUE_ACTIONS))
    require(user, QUEUE_ACTIONS[action])
    queue = str(form.get("queue") or "")
    if not queue:
        raise HTTPException(400, "option 'queue' is required")
    node = str(form.get("node") or "") or None
    kerrera = web.kerrera
    if action in ("scale", "start"):
        limit = _int(form, "limit")
        if limit < 1:
            raise HTTPException(400, "option 'limit' must be at least 1")
        call = kerrera.scale_queue if action == "scale" else kerrera.start_queue
        await call(queue, limit, node=node)
    else:
        calls = {"pause": kerrera.pause_queue, "resume": kerrera.resume_queue,
                 "stop": kerrera.stop_queue}  # fmt: skip
        await calls[action](queue, node=node)
    telemetry.execute(
        EVENT, {"count": 0},
        {"user": user.name, "action": QUEUE_ACTIONS[action], "job_ids": [],
         "command": action, "queue": queue, "node": node},
    )  # fmt: skip
    live.poke()
    return RedirectResponse(f"{base_path(request)}/queues", status_code=303)


#: The fields of the insert form.
INSERT_FIELDS = ("worker", "queue", "args", "priority", "max_attempts", "tags", "schedule_in")


async def new_job_form(request: Request) -> Response:
    """GET `/jobs/new`: the insert form (for users who may insert jobs)."""
    user = await user_of(request)
    require(user, "insert_jobs")
    return page(request, "new_job.html", user, form={}, problem=None)


async def insert_job(request: Request) -> Response:
    """POST `/jobs/new`: insert one job through `Kerrera.insert`, then show it."""
    user, form = await _form(request)
    require(user, "insert_jobs")
    web = web_of(request)
    await web.ready()
    given = {name: str(form.get(name) or "").strip() for name in INSERT_FIELDS}
    try:
        job = _job_of(given)
    except (ConfigError, ValueError) as exc:
        return page(request, "new_job.html", user, 400, form=given, problem=str(exc))
    saved = await web.kerrera.insert(job)
    assert saved.id is not None
    audit(user, "insert_jobs", [saved.id], worker=saved.worker, queue=saved.queue)
    return RedirectResponse(f"{base_path(request)}/jobs/{saved.id}", status_code=303)


def _job_of(given: dict[str, str]) -> Job:
    """The job the form describes, each value checked as `Worker.new` checks it."""
    try:
        args = json.loads(given["args"] or "{}")
    except json.JSONDecodeError as exc:
        raise ConfigError(f"option 'args' must be a JSON object: {exc.msg}") from None
    numbers: dict[str, int | None] = {}
    for name in ("priority", "max_attempts", "schedule_in"):
        text = given[name]
        if text and not text.isdigit():
            raise ConfigError(f"option '{name}' must be a whole number, got {text!r}")
        numbers[name] = int(text) if text else None
    _when, delay = check_schedule(None, numbers["schedule_in"])
    tags = [t.strip() for t in given["tags"].split(",") if t.strip()]
    worker = given["worker"]
    if not worker or len(worker) > 127:
        raise ConfigError("option 'worker' must be 1..127 characters")
    return Job(
        state=JobState.SCHEDULED if delay else JobState.AVAILABLE,
        queue=check_queue(given["queue"] or "default"),
        worker=worker,
        args=check_json_object(args, "args"),
        priority=check_priority(numbers["priority"] or 0),
        max_attempts=check_max_attempts(numbers["max_attempts"] or 20),
        tags=check_tags(tags),
        schedule_in=delay,
    )
