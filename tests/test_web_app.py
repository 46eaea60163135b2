"""The dashboard over HTTP (in process, through httpx's ASGI transport) against a real
PostgreSQL: pages, search, paging, escaping, actions with their dry run, permissions,
cross-site defences, Basic auth and the audit events. The browser tests
(tests/browser/test_web_pages.py) drive the same app in Chromium over a real server."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("jinja2")

from starlette.requests import Request

from kerrera import Kerrera, telemetry
from kerrera.core.errors import ConfigError
from kerrera.core.job import Job
from kerrera.web import User, basic_auth, kerrera_web

SAME_SITE = {"sec-fetch-site": "same-origin"}
XSS = "<script>alert('x')</script>"


@pytest.fixture
async def seeded(dsn: str, prefix: str) -> AsyncIterator[Kerrera]:
    """The test schema with a few jobs: two mail jobs (one with markup in its args),
    five media jobs tagged vip, and three discarded ones."""
    app = Kerrera(dsn, prefix=prefix)
    await app.migrate()
    async with app:
        await app.insert(Job(queue="mail", worker="app.Mailer", args={"to": XSS}))
        await app.insert(Job(queue="mail", worker="app.Mailer", args={"to": "b@example.com"}))
        for i in range(5):
            await app.insert(
                Job(queue="media", worker="app.Thumb", args={"user": {"id": i}}, tags=["vip"])
            )
        yield app


@pytest.fixture
def audit() -> Iterator[list[dict[str, Any]]]:
    """The `web.action` events emitted during the test (metadata of each)."""
    seen: list[dict[str, Any]] = []
    telemetry.attach("test-web-audit", "web.action", lambda _e, _m, meta: seen.append(meta))
    yield seen
    telemetry.detach("test-web-audit")


@pytest.fixture
async def serve(dsn: str, prefix: str) -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    """`serve(**options)`: an HTTP client of a dashboard on the test schema."""
    apps: list[Any] = []
    clients: list[httpx.AsyncClient] = []

    def make(**options: Any) -> httpx.AsyncClient:
        options.setdefault("dsn", dsn)
        app = kerrera_web(prefix=prefix, **options)
        apps.append(app)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()
    for app in apps:
        await app.state.web.close()


async def token(client: httpx.AsyncClient, path: str = "/jobs") -> str:
    """Load a page (setting the token cookie) and return the form token it carries."""
    page = await client.get(path)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found, page.text
    assert client.cookies.get("kerrera_csrf") == found.group(1)
    return found.group(1)


def rows(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<tr data-id="(\d+)"', html)]


async def test_the_jobs_page_shows_counts_and_jobs_newest_first(
    seeded: Kerrera, serve: Any
) -> None:
    client = serve()
    page = await client.get("/jobs?state=available")
    assert page.status_code == 200
    assert rows(page.text) == [7, 6, 5, 4, 3, 2, 1]
    assert re.search(r'data-state="available"[^>]*>7<', page.text)
    assert re.search(r'data-state="completed"[^>]*>0<', page.text)
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"


async def test_markup_in_args_is_shown_escaped_never_as_markup(seeded: Kerrera, serve: Any) -> None:
    client = serve()
    for path in ("/jobs?state=available", "/jobs/1"):
        page = await client.get(path)
        assert "<script>alert" not in page.text
        assert "&lt;script&gt;alert(" in page.text
    # The only scripts a page loads are the dashboard's own files (the CSP forbids others).
    assert re.findall(r"<script[^>]*>", page.text) == [
        '<script src="/static/theme.js">',
        '<script src="/static/kerrera.js" defer>',
    ]


async def test_search_filters_by_queue_tag_and_args(seeded: Kerrera, serve: Any) -> None:
    client = serve()
    assert rows((await client.get("/jobs?q=queues:mail")).text) == [2, 1]
    assert rows((await client.get("/jobs?q=tags:vip args.user.id:1,3")).text) == [6, 4]
    assert rows((await client.get("/jobs?q=workers:app.Thumb ids:3,4,99")).text) == [4, 3]
    page = await client.get("/jobs?q=colour:blue")
    assert page.status_code == 200 and 'class="problem"' in page.text and "colour" in page.text
    assert rows(page.text) == []


async def test_pages_follow_older_and_newer_links(seeded: Kerrera, serve: Any) -> None:
    client = serve(page_size=3)
    first = await client.get("/jobs")
    assert rows(first.text) == [7, 6, 5]
    older = re.search(r'href="(/jobs\?state=available&amp;older=\d+)"', first.text)
    assert older, first.text
    second = await client.get(older.group(1).replace("&amp;", "&"))
    assert rows(second.text) == [4, 3, 2]
    newer = re.search(r'href="(/jobs\?state=available&amp;newer=\d+)"', second.text)
    assert newer
    assert rows((await client.get(newer.group(1).replace("&amp;", "&"))).text) == [7, 6, 5]


async def test_bad_options_get_a_400_naming_them(seeded: Kerrera, serve: Any) -> None:
    client = serve()
    page = await client.get("/jobs?state=finished")
    assert page.status_code == 400 and "option &#39;state&#39;" in page.text
    assert (await client.get("/jobs?older=abc")).status_code == 400
    assert (await client.get("/jobs/999")).status_code == 404
    with pytest.raises(ConfigError, match="bulk_action_limit"):
        kerrera_web(dsn="postgresql://x", bulk_action_limit=0)


async def test_the_job_page_shows_args_errors_and_related_jobs(
    seeded: Kerrera, serve: Any, sql: Any
) -> None:
    trace = (
        "Traceback (most recent call last):\n"
        '  File "/srv/app/jobs.py", line 3, in perform\n    thumb()\n'
        '  File "/venv/lib/python3.12/site-packages/kerrera/queue/executor.py", line 9, in run\n'
        "    await call()\n"
        "ValueError: no such image"
    )
    error = json.dumps({"at": "2026-12-03T10:00:00", "attempt": 1, "error": trace})
    sql(
        "UPDATE oban_jobs SET state = 'retryable', attempt = 1, errors = ARRAY[%s::jsonb] "
        "WHERE id = 3",
        (error,),
    )
    page = (await serve().get("/jobs/3")).text
    assert "app.Thumb" in page and "no such image" in page
    assert "attempt 1 failed" in page
    # Kerrera's own frames are folded away; the application's are shown.
    folded = re.search(
        r"<details class=\"ours\"><summary>Kerrera frames</summary>(.*?)</details>", page, re.S
    )
    assert folded and "executor.py" in folded.group(1) and "jobs.py" not in folded.group(1)
    assert "/srv/app/jobs.py" in page
    assert 'href="/jobs/4"' in page  # another app.Thumb job


async def test_bulk_retry_shows_a_dry_run_then_acts_and_audits(
    seeded: Kerrera, serve: Any, sql: Any, audit: list[dict[str, Any]]
) -> None:
    sql("UPDATE oban_jobs SET state = 'discarded', discarded_at = now() WHERE queue = 'media'")
    client = serve()
    form = {
        "csrf_token": await token(client),
        "do": "retry:search",
        "state": "discarded",
        "q": "args.user.id:0,1,2",
    }
    dry = await client.post("/jobs/actions", data=form, headers=SAME_SITE)
    assert dry.status_code == 200 and "Retry 3 jobs?" in dry.text
    assert rows(dry.text) == [] and dry.text.count('href="/jobs/') >= 3  # the sample
    assert sql("SELECT count(*) FROM oban_jobs WHERE state = 'available'")[0][0] == 2
    assert audit == []  # a dry run changes nothing and is no action
    upto = re.search(r'name="upto" value="(\d+)"', dry.text)
    assert upto
    done = await client.post(
        "/jobs/actions", headers=SAME_SITE, data={**form, "confirm": "1", "upto": upto.group(1)}
    )
    assert done.status_code == 303 and "retried+3+job" in done.headers["location"]
    states = dict(sql("SELECT id, state::text FROM oban_jobs WHERE queue = 'media'"))
    assert states == {
        3: "available",
        4: "available",
        5: "available",
        6: "discarded",
        7: "discarded",
    }
    assert audit == [
        {
            "user": "local",
            "action": "retry_jobs",
            "job_ids": [3, 4, 5],
            "scope": "search",
            "search": "args.user.id:0,1,2",
            "state": "discarded",
        }
    ]


async def test_selected_jobs_are_cancelled_after_their_dry_run(
    seeded: Kerrera, serve: Any, sql: Any, audit: list[dict[str, Any]]
) -> None:
    client = serve()
    form = [
        ("csrf_token", await token(client)),
        ("do", "cancel:selected"),
        ("state", "available"),
        ("ids", "1"),
        ("ids", "2"),
    ]
    form_headers = {**SAME_SITE, "content-type": "application/x-www-form-urlencoded"}
    dry = await client.post(
        "/jobs/actions", content=str(httpx.QueryParams(form)), headers=form_headers
    )
    assert "Cancel 2 jobs?" in dry.text
    form += [("confirm", "1"), ("upto", "0")]
    done = await client.post(
        "/jobs/actions", content=str(httpx.QueryParams(form)), headers=form_headers
    )
    assert done.status_code == 303
    assert sql("SELECT id FROM oban_jobs WHERE state = 'cancelled' ORDER BY id") == [(1,), (2,)]
    assert audit[0]["job_ids"] == [1, 2] and audit[0]["action"] == "cancel_jobs"


async def test_the_bulk_action_limit_caps_what_one_action_touches(
    seeded: Kerrera, serve: Any, sql: Any
) -> None:
    client = serve(bulk_action_limit=4)
    form = {"csrf_token": await token(client), "do": "delete:search", "state": "available"}
    dry = await client.post("/jobs/actions", data=form, headers=SAME_SITE)
    assert "more than 4" in dry.text and "only the 4 oldest" in dry.text
    upto = re.search(r'name="upto" value="(\d+)"', dry.text)
    assert upto
    await client.post(
        "/jobs/actions", data={**form, "confirm": "1", "upto": upto.group(1)}, headers=SAME_SITE
    )
    assert sql("SELECT id FROM oban_jobs ORDER BY id") == [(5,), (6,), (7,)]


async def test_a_read_only_user_sees_no_action_and_gets_403_on_post(
    seeded: Kerrera, serve: Any, sql: Any
) -> None:
    client = serve(resolver=lambda request: User("ada", "read_only"))
    for path in ("/jobs", "/jobs/1", "/queues"):
        page = await client.get(path)
        assert page.status_code == 200, path
        assert 'method="post"' not in page.text and 'class="act' not in page.text
        assert 'name="ids"' not in page.text
    assert "ada · read only" in page.text
    tok = client.cookies.get("kerrera_csrf")
    for path, data in (
        (
            "/jobs/actions",
            {"do": "delete:search", "state": "available", "confirm": "1", "upto": "99"},
        ),
        ("/jobs/1/actions", {"action": "delete"}),
        ("/queues/actions", {"action": "pause", "queue": "mail"}),
    ):
        refused = await client.post(path, data={"csrf_token": tok, **data}, headers=SAME_SITE)
        assert refused.status_code == 403, (path, refused.text)
    assert sql("SELECT count(*) FROM oban_jobs")[0][0] == 7


async def test_a_user_granted_some_actions_sees_and_may_do_only_those(
    seeded: Kerrera, serve: Any
) -> None:
    client = serve(resolver=lambda request: User("ops", {"retry_jobs"}))
    page = (await client.get("/jobs/1")).text
    assert 'value="retry"' in page and 'value="delete"' not in page
    refused = await client.post(
        "/jobs/1/actions",
        headers=SAME_SITE,
        data={"csrf_token": await token(client), "action": "delete"},
    )
    assert refused.status_code == 403 and "ops may not delete jobs" in refused.text


async def test_a_resolver_returning_none_forbids_the_dashboard(seeded: Kerrera, serve: Any) -> None:
    async def nobody(request: Request) -> User | None:
        return None

    assert (await serve(resolver=nobody).get("/jobs")).status_code == 403


async def test_cross_site_posts_are_refused(seeded: Kerrera, serve: Any, sql: Any) -> None:
    client = serve()
    tok = await token(client)
    form = {"csrf_token": tok, "action": "delete"}
    for headers in (
        {"sec-fetch-site": "cross-site"},
        {"sec-fetch-site": "same-site"},  # a sibling subdomain is another site here
        {"origin": "https://evil.example"},
        {"origin": "null"},
    ):
        refused = await client.post("/jobs/1/actions", data=form, headers=headers)
        assert refused.status_code == 403, headers
        assert "Cross-site" in refused.text
    # Same site, but no token or another browser's token.
    for data in ({"action": "delete"}, {"action": "delete", "csrf_token": "x" * 43}):
        refused = await client.post("/jobs/1/actions", data=data, headers=SAME_SITE)
        assert refused.status_code == 403 and "token" in refused.text
    # A GET never acts.
    assert (await client.get("/jobs/1/actions")).status_code == 405
    assert sql("SELECT count(*) FROM oban_jobs")[0][0] == 7
    done = await client.post("/jobs/1/actions", data=form, headers=SAME_SITE)
    assert done.status_code == 303
    assert sql("SELECT count(*) FROM oban_jobs")[0][0] == 6


async def test_basic_auth_reads_its_password_from_the_environment(
    seeded: Kerrera, serve: Any
) -> None:
    resolver = basic_auth(environ={"KERRERA_WEB_PASSWORD": "s3cret"}, access="read_only")
    client = serve(resolver=resolver)
    denied = await client.get("/jobs")
    assert denied.status_code == 401 and denied.headers["www-authenticate"].startswith("Basic")
    wrong = base64.b64encode(b"admin:nope").decode()
    assert (
        await client.get("/jobs", headers={"authorization": f"Basic {wrong}"})
    ).status_code == 401
    right = base64.b64encode(b"admin:s3cret").decode()
    page = await client.get("/jobs", headers={"authorization": f"Basic {right}"})
    assert page.status_code == 200 and "admin · read only" in page.text
    with pytest.raises(ConfigError, match="KERRERA_WEB_PASSWORD"):
        basic_auth(environ={})


async def test_queue_commands_are_posted_and_audited(
    seeded: Kerrera, serve: Any, audit: list[dict[str, Any]], sql: Any
) -> None:
    client = serve()
    page = await client.get("/queues")
    assert "mail" in page.text and "media" in page.text
    done = await client.post(
        "/queues/actions",
        headers=SAME_SITE,
        data={"csrf_token": await token(client, "/queues"), "action": "pause", "queue": "media"},
    )
    assert done.status_code == 303 and done.headers["location"] == "/queues"
    assert audit[-1]["action"] == "pause_queues" and audit[-1]["queue"] == "media"


def test_a_user_must_name_known_actions() -> None:
    with pytest.raises(ConfigError, match="unknown action"):
        User("x", {"retry_job"})
    with pytest.raises(ConfigError, match="'access'"):
        User("x", "admin")
    assert User("x", {"retry_jobs"}).may("retry_jobs") and not User("x", "read_only").acts


async def test_the_errors_page_groups_failures_by_worker_and_exception(
    seeded: Kerrera, serve: Any, sql: Any
) -> None:
    def fail(ids: str, text: str) -> None:
        error = json.dumps({"at": "2026-12-03T10:00:00+00:00", "attempt": 1, "error": text})
        sql(
            "UPDATE oban_jobs SET state = 'discarded', discarded_at = now(), attempt = 1, "
            f"errors = ARRAY[%s::jsonb] WHERE id IN ({ids})",
            (error,),
        )

    fail("3, 4, 5", "Traceback (most recent call last):\nOSError: disk <b>full</b>")
    fail("1", "Traceback (most recent call last):\nValueError: bad address")
    page = (await serve().get("/errors")).text
    groups = re.findall(
        r"<tr>\s*<td>([\w.]+)</td>\s*<td><code>(\w+)</code></td>\s*<td>(\d+)<", page
    )
    assert groups[:2] == [("app.Thumb", "OSError", "3"), ("app.Mailer", "ValueError", "1")]
    assert "disk &lt;b&gt;full&lt;/b&gt;" in page


async def test_redaction_hooks_decide_what_args_and_meta_show(seeded: Kerrera, serve: Any) -> None:
    def hide(job: Job, data: dict[str, Any]) -> dict[str, Any]:
        return {key: "[hidden]" for key in data}

    client = serve(redact_args=hide, redact_meta=lambda job, meta: {"shown": job.id})
    detail = (await client.get("/jobs/2")).text
    assert "b@example.com" not in detail and "[hidden]" in detail
    assert "&#34;shown&#34;: 2" in detail
    listing = (await client.get("/jobs")).text
    assert "b@example.com" not in listing and "[hidden]" in listing


async def test_a_long_bulk_action_shows_its_progress_chunk_by_chunk(
    seeded: Kerrera, serve: Any, sql: Any, audit: list[dict[str, Any]], monkeypatch: Any
) -> None:
    from kerrera.web import actions

    monkeypatch.setattr(actions, "CHUNK", 2)
    client = serve()
    form = {"csrf_token": await token(client), "do": "cancel:search", "state": "available"}
    dry = await client.post("/jobs/actions", data=form, headers=SAME_SITE)
    upto = re.search(r'name="upto" value="(\d+)"', dry.text)
    assert upto and "Cancel 7 jobs?" in dry.text
    done = await client.post(
        "/jobs/actions", data={**form, "confirm": "1", "upto": upto.group(1)}, headers=SAME_SITE
    )
    assert done.status_code == 200
    lines = re.findall(r"<li>(.*?)</li>", done.text)
    assert lines == [
        "cancelled 2 (2 of 7 looked at)",
        "cancelled 4 (4 of 7 looked at)",
        "cancelled 6 (6 of 7 looked at)",
        "cancelled 7 (7 of 7 looked at)",
    ]
    assert "Cancelled 7 job(s)." in done.text and 'id="back"' in done.text
    assert "script-src 'self'" in done.headers["content-security-policy"]
    assert sql("SELECT count(*) FROM oban_jobs WHERE state = 'cancelled'") == [(7,)]
    assert len(audit) == 1 and audit[0]["job_ids"] == [1, 2, 3, 4, 5, 6, 7]


async def test_a_job_is_inserted_from_the_form_and_audited(
    seeded: Kerrera, serve: Any, sql: Any, audit: list[dict[str, Any]]
) -> None:
    client = serve()
    assert 'href="/jobs/new"' in (await client.get("/jobs")).text
    form = {
        "csrf_token": await token(client, "/jobs/new"),
        "worker": "app.Report",
        "queue": "reports",
        "args": '{"month": "2026-11", "note": "<b>x</b>"}',
        "priority": "3",
        "tags": "ops, monthly",
        "schedule_in": "600",
    }
    done = await client.post("/jobs/new", data=form, headers=SAME_SITE)
    assert done.status_code == 303 and done.headers["location"] == "/jobs/8"
    row = sql("SELECT worker, queue, args, priority, tags, state::text FROM oban_jobs WHERE id = 8")
    assert row == [
        ("app.Report", "reports", {"month": "2026-11", "note": "<b>x</b>"}, 3,
         ["ops", "monthly"], "scheduled"),
    ]  # fmt: skip
    assert audit == [{"user": "local", "action": "insert_jobs", "job_ids": [8],
                      "worker": "app.Report", "queue": "reports"}]  # fmt: skip
    bad = await client.post("/jobs/new", data={**form, "args": "[1, 2]"}, headers=SAME_SITE)
    assert bad.status_code == 400 and "option &#39;args&#39;" in bad.text
    assert "app.Report" in bad.text  # the form keeps what was typed
    bad = await client.post("/jobs/new", data={**form, "priority": "12"}, headers=SAME_SITE)
    assert bad.status_code == 400 and "priority" in bad.text


async def test_inserting_needs_the_insert_permission(seeded: Kerrera, serve: Any) -> None:
    client = serve(resolver=lambda request: User("ops", {"retry_jobs"}))
    assert 'href="/jobs/new"' not in (await client.get("/jobs")).text
    assert (await client.get("/jobs/new")).status_code == 403
    refused = await client.post(
        "/jobs/new",
        data={"csrf_token": await token(client), "worker": "app.X", "args": "{}"},
        headers=SAME_SITE,
    )
    assert refused.status_code == 403
