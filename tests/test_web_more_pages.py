"""The dashboard's charts, workflows, cron and error-group pages, job editing, and the
queues page's sparklines and start / stop buttons, over HTTP (in process) against a real
PostgreSQL; plus the pure parts (cron in words, the workflow layout, the SVG drawing)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

pytest.importorskip("jinja2")

import test_web_app
from test_web_app import SAME_SITE, token

from kerrera import Kerrera
from kerrera.core.job import Job, JobState
from kerrera.core.workflow import Workflow
from kerrera.engine.dashboard import Dashboard, StatsStore
from kerrera.engine.migrations.web import BUCKETS
from kerrera.web import User
from kerrera.web.cronwords import describe
from kerrera.web.graph import draw, layout
from kerrera.web.operations import error_kind
from kerrera.web.series import bins
from kerrera.web.svg import Series, legend, line_chart, nice_max

READ_ONLY = User("viewer", "read_only")
# The fixtures of the first web tests: a seeded schema, a dashboard client, the audit log.
seeded, serve, audit = test_web_app.seeded, test_web_app.serve, test_web_app.audit


def hist(bucket: int, n: int) -> list[int]:
    """A duration histogram with `n` jobs in `bucket`."""
    return [n if i == bucket else 0 for i in range(BUCKETS)]


async def write_stats(dsn: str, prefix: str, minutes_ago: int = 2) -> None:
    """Per-minute statistics as nodes write them: mail (12 completed, 3 failed) and
    media (5 completed), in all three groupings, a few minutes ago."""
    now = datetime.now(UTC).replace(tzinfo=None, second=0, microsecond=0)
    bucket = (now - timedelta(minutes=minutes_ago)).isoformat()
    rows = []

    def row(q: str, w: str, done: int, failed: int, execs: list[int]) -> dict[str, Any]:
        return {"span": 60, "bucket": bucket, "queue": q, "worker": w, "completed": done,
                "failed": failed, "cancelled": 0, "other": 0, "exec_hist": execs,
                "queue_hist": hist(4, done + failed)}  # fmt: skip

    for queue, worker, done, failed, slow in (
        ("mail", "app.Mailer", 12, 3, 20),
        ("media", "app.Thumb", 5, 0, 30),
    ):
        rows += [row(q, w, done, failed, hist(slow, done + failed)) for q, w in
                 ((queue, worker), (queue, ""))]  # fmt: skip
    both = [a + b for a, b in zip(hist(20, 15), hist(30, 5), strict=True)]
    rows.append(row("", "", 17, 3, both))
    dash = await Dashboard.connect(dsn, prefix)
    try:
        await StatsStore(dash.pool, prefix).write(rows)
    finally:
        await dash.close()


# -- charts --------------------------------------------------------------------------------
async def test_the_charts_page_draws_throughput_and_percentiles_from_stored_stats(
    seeded: Kerrera, serve: Any, dsn: str, prefix: str
) -> None:
    await write_stats(dsn, prefix)
    client = serve()
    page = await client.get("/charts?window=15m")
    assert page.status_code == 200
    assert page.text.count('<svg class="chart"') == 3
    assert "<polyline" in page.text or 'class="line s0"' in page.text
    total = re.search(
        r'<tr data-key="all jobs"><td>all jobs</td><td>([\d,]+)</td><td>(\d+)', page.text
    )
    assert total and total.groups() == ("17", "3")
    # A tooltip per point: the p95 execution time of the bin (bucket 30 of the histogram).
    assert re.search(r"<title>p95 · \d\d:\d\d · [\d.]+ ms</title>", page.text)
    by_queue = await client.get("/charts?window=1h&by=queue&pct=p99")
    assert re.findall(r'<tr data-key="([^"]+)">', by_queue.text) == ["mail", "media"]
    assert "Execution time (p99)" in by_queue.text
    one = await client.get("/charts?window=1h&by=worker&queue=media")
    assert re.findall(r'<tr data-key="([^"]+)">', one.text) == ["app.Thumb"]
    bad = await client.get("/charts?window=2h")
    assert bad.status_code == 400 and "option &#39;window&#39;" in bad.text


async def test_charts_without_the_statistics_table_ask_for_the_migration(
    seeded: Kerrera, serve: Any, sql: Any
) -> None:
    sql("DROP TABLE kerrera_job_stats")
    client = serve()
    page = await client.get("/charts")
    assert page.status_code == 200 and "kerrera migrate" in page.text
    assert (await client.get("/queues")).status_code == 200  # no sparklines, no error


def test_bins_match_the_stored_resolution() -> None:
    now = datetime(2026, 12, 3, 15, 7, 30)
    starts, step = bins(timedelta(minutes=5), now)
    assert step == 60 and starts[0] == datetime(2026, 12, 3, 15, 2) and starts[-1].minute == 7
    starts, step = bins(timedelta(hours=24), now)
    assert step == 1800 and len(starts) == 49 and starts[0] == datetime(2026, 12, 2, 15, 0)


def test_chart_svg_escapes_names_and_breaks_lines_at_gaps() -> None:
    series = [Series("<script>x</script>", [1, None, 3, 4])]
    svg = str(line_chart(series, ["a", "b", "c", "d"], title="t"))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert svg.count("<polyline") == 1 and svg.count('<circle class="line') == 1  # 1 | 3,4
    assert "&lt;script&gt;" in str(legend(series))
    assert [nice_max(v) for v in (0, 0.7, 3, 17, 180, 2400)] == [1, 0.8, 4, 20, 200, 4000]
    assert nice_max(2400, "ms") == 4000 and nice_max(4_900_000, "ms") == 6_000_000


# -- queues --------------------------------------------------------------------------------
async def test_the_queues_page_has_sparklines_and_start_stop(
    seeded: Kerrera, serve: Any, dsn: str, prefix: str, audit: list[dict[str, Any]]
) -> None:
    await write_stats(dsn, prefix)
    client = serve()
    page = await client.get("/queues")
    mail = page.text[page.text.index('data-queue="mail"') :]
    assert '<svg class="spark"' in mail.split("</tr>")[0]
    assert "15 finished in the last hour" in page.text
    assert 'value="start"' in page.text
    form = {"csrf_token": await token(client, "/queues"), "queue": "mail"}
    started = await client.post(
        "/queues/actions", headers=SAME_SITE, data={**form, "action": "start", "limit": "3"}
    )
    stopped = await client.post(
        "/queues/actions", headers=SAME_SITE, data={**form, "action": "stop"}
    )
    assert started.status_code == stopped.status_code == 303
    assert [(a["action"], a["command"]) for a in audit] == [
        ("stop_queues", "start"),
        ("stop_queues", "stop"),
    ]
    viewer = serve(resolver=lambda _r: READ_ONLY)
    assert 'value="start"' not in (await viewer.get("/queues")).text


# -- workflows -----------------------------------------------------------------------------
async def insert_workflow(app: Kerrera) -> Workflow:
    wf = Workflow(name="track")
    wf.add("download", Job(queue="media", worker="app.Download", args={"t": 1}))
    wf.add_many("stems", [Job(queue="media", worker="app.Stem", args={"s": s}) for s in "ab"],
                deps=["download"])  # fmt: skip
    wf.add("analyse", Job(queue="media", worker="app.Analyse"), deps=["stems"])
    await app.insert(wf)
    return wf


async def test_workflows_are_listed_and_drawn_with_live_states(seeded: Kerrera, serve: Any) -> None:
    wf = await insert_workflow(seeded)
    client = serve()
    listing = await client.get("/workflows")
    assert f'data-workflow="{wf.id}"' in listing.text and "track" in listing.text
    assert "available 1" in listing.text and "suspended 3" in listing.text
    page = await client.get(f"/workflows/{wf.id}")
    assert page.status_code == 200
    steps = dict(re.findall(r'class="step" data-step="([^"]+)" data-state="(\w+)"', page.text))
    assert steps == {
        "download": "available",
        "stems.0": "suspended",
        "stems.1": "suspended",
        "analyse": "suspended",
    }
    assert page.text.count('<path class="edge"') == 4  # download->stems.0/1, stems.0/1->analyse
    assert (await client.get("/workflows/nope")).status_code == 404


async def test_a_workflow_is_cancelled_and_retried_from_its_page(
    seeded: Kerrera, serve: Any, sql: Any, audit: list[dict[str, Any]]
) -> None:
    wf = await insert_workflow(seeded)
    client = serve()
    form = {"csrf_token": await token(client, f"/workflows/{wf.id}")}
    done = await client.post(
        f"/workflows/{wf.id}/actions", headers=SAME_SITE, data={**form, "action": "cancel"}
    )
    assert done.status_code == 303 and done.headers["location"] == f"/workflows/{wf.id}"
    states = sql(
        "SELECT DISTINCT state::text FROM oban_jobs WHERE meta->>'workflow_id' = %s", (wf.id,)
    )
    assert states == [("cancelled",)]
    assert audit[-1]["action"] == "cancel_jobs" and len(audit[-1]["job_ids"]) == 4
    assert audit[-1]["workflow_id"] == wf.id
    await client.post(
        f"/workflows/{wf.id}/actions", headers=SAME_SITE, data={**form, "action": "retry"}
    )
    rows = sql(
        "SELECT meta->>'name', state::text FROM oban_jobs WHERE meta->>'workflow_id' = %s", (wf.id,)
    )
    assert dict(rows)["download"] == "available" and dict(rows)["analyse"] == "suspended"
    viewer = serve(resolver=lambda _r: READ_ONLY)
    assert "Retry failed steps" not in (await viewer.get(f"/workflows/{wf.id}")).text
    refused = await viewer.post(
        f"/workflows/{wf.id}/actions",
        headers=SAME_SITE,
        data={"csrf_token": viewer.cookies.get("kerrera_csrf"), "action": "cancel"},
    )
    assert refused.status_code == 403


def test_the_layout_puts_each_step_after_everything_it_waits_on() -> None:
    def step(i: int, name: str, deps: list[str], announces: list[str]) -> Job:
        meta = {"name": name, "deps": deps, "announces": announces}
        return Job(id=i, worker="w", meta=meta, state=JobState.SUSPENDED)

    # A graft step's grafted job comes last (highest id) but sits before `after`.
    jobs = [
        step(1, "a", [], ["a"]),
        step(2, "g", ["a"], ["g"]),
        step(3, "after", ["g"], ["after"]),
        step(4, "g.x", [], ["g.x", "g"]),
    ]
    found = {s.name: (s.depth, [jobs[p].meta["name"] for p in s.preds]) for s in layout(jobs)}
    assert found == {
        "a": (0, []),
        "g": (1, ["a"]),
        "after": (2, ["g", "g.x"]),
        "g.x": (0, []),
    }
    drawn = str(draw(layout([step(9, "<b>x</b>", [], [])]), "/k"))
    assert "<b>" not in drawn and "&lt;b&gt;x" in drawn and 'href="/k/jobs/9"' in drawn


# -- errors --------------------------------------------------------------------------------
def fail(sql: Any, ids: str, text: str, state: str = "discarded") -> None:
    error = json.dumps({"at": "2026-12-03T10:00:00+00:00", "attempt": 1, "error": text})
    sql(
        f"UPDATE oban_jobs SET state = '{state}', attempt = 1, errors = ARRAY[%s::jsonb] "
        f"WHERE id IN ({ids})",
        (error,),
    )


async def test_an_error_group_is_retried_after_its_dry_run(
    seeded: Kerrera, serve: Any, sql: Any, audit: list[dict[str, Any]]
) -> None:
    fail(sql, "3, 4", "Traceback (most recent call last):\nOSError: disk full")
    fail(sql, "5", "Traceback (most recent call last):\nOSError: disk full", "retryable")
    fail(sql, "6", "ValueError: bad size")
    client = serve()
    page = await client.get("/errors")
    assert page.text.count('action="/errors/actions"') == 2
    form = {"csrf_token": await token(client, "/errors"), "do": "retry", "worker": "app.Thumb"}
    dry = await client.post("/errors/actions", headers=SAME_SITE, data={**form, "kind": "OSError"})
    assert dry.status_code == 200 and "Retry 3 failed jobs?" in dry.text
    assert (
        audit == [] and sql("SELECT count(*) FROM oban_jobs WHERE state = 'available'")[0][0] == 3
    )
    upto = re.search(r'name="upto" value="(\d+)"', dry.text)
    assert upto
    # A job failing the same way after the dry run is not part of the action.
    late = await seeded.insert(Job(queue="media", worker="app.Thumb"))
    fail(sql, str(late.id), "OSError: disk full")
    confirm = {**form, "kind": "OSError", "confirm": "1", "upto": upto.group(1)}
    done = await client.post("/errors/actions", headers=SAME_SITE, data=confirm)
    assert done.status_code == 303 and "retried+3+job" in done.headers["location"]
    states = dict(sql("SELECT id, state::text FROM oban_jobs WHERE id IN (3, 4, 5, 6)"))
    assert states == {3: "available", 4: "available", 5: "available", 6: "discarded"}
    assert sql("SELECT state::text FROM oban_jobs WHERE id = %s", (late.id,)) == [("discarded",)]
    assert audit[0]["job_ids"] == [3, 4, 5] and audit[0]["kind"] == "OSError"
    assert (
        "Retried 3 job(s) of app.Thumb OSError" in (await client.get(done.headers["location"])).text
    )
    viewer = serve(resolver=lambda _r: READ_ONLY)
    assert 'action="/errors/actions"' not in (await viewer.get("/errors")).text
    refused = await viewer.post(
        "/errors/actions",
        headers=SAME_SITE,
        data={**form, "csrf_token": viewer.cookies.get("kerrera_csrf"), "kind": "ValueError"},
    )
    assert refused.status_code == 403
    cross = await client.post(
        "/errors/actions",
        headers={"sec-fetch-site": "cross-site"},
        data={**form, "kind": "ValueError", "confirm": "1", "upto": "99"},
    )
    assert cross.status_code == 403 and states[6] == "discarded"


def test_error_kinds_are_read_as_the_errors_page_groups_them() -> None:
    def job(text: str) -> Job:
        return Job(worker="w", errors=[{"attempt": 1, "error": text}])

    assert error_kind(job("Traceback (most recent call last):\n  x\nKeyError: 'a'\n")) == "KeyError"
    assert error_kind(job("** (RuntimeError) boom\n  stack")) == "RuntimeError"
    assert error_kind(job("(Cancelled) by the operator")) == "Cancelled"
    assert error_kind(job("app.errors.Late: too late")) == "app.errors.Late"
    assert error_kind(Job(worker="w")) == ""


# -- editing -------------------------------------------------------------------------------
async def test_a_waiting_job_is_edited_in_one_guarded_statement(
    seeded: Kerrera, serve: Any, sql: Any, audit: list[dict[str, Any]]
) -> None:
    client = serve()
    page = await client.get("/jobs/2")
    assert 'href="/jobs/2/edit"' in page.text
    form_page = await client.get("/jobs/2/edit")
    assert form_page.status_code == 200 and "b@example.com" in form_page.text
    later = (datetime.now(UTC) + timedelta(hours=2)).replace(tzinfo=None, microsecond=0)
    form = {
        "csrf_token": await token(client, "/jobs/2/edit"),
        "args": '{"to": "c@example.com"}',
        "queue": "urgent",
        "priority": "3",
        "scheduled_at": later.isoformat(),
    }
    done = await client.post("/jobs/2/edit", headers=SAME_SITE, data=form)
    assert done.status_code == 303 and done.headers["location"] == "/jobs/2"
    row = sql("SELECT args, queue, priority, state::text, scheduled_at FROM oban_jobs WHERE id = 2")
    assert row == [({"to": "c@example.com"}, "urgent", 3, "scheduled", later)]
    assert audit[-1]["action"] == "update_jobs" and audit[-1]["job_ids"] == [2]
    assert audit[-1]["changed"] == ["args", "priority", "queue", "scheduled_at"]
    again = await client.post("/jobs/2/edit", headers=SAME_SITE, data=form)  # no change
    assert again.status_code == 303 and len(audit) == 1
    bad = await client.post("/jobs/2/edit", headers=SAME_SITE, data={**form, "args": "[1]"})
    assert bad.status_code == 400 and "option &#39;args&#39;" in bad.text
    bad = await client.post("/jobs/2/edit", headers=SAME_SITE, data={**form, "priority": "12"})
    assert bad.status_code == 400 and "priority" in bad.text
    sql("UPDATE oban_jobs SET state = 'executing', attempted_at = now() WHERE id = 1")
    assert (await client.get("/jobs/1/edit")).status_code == 409
    assert 'href="/jobs/1/edit"' not in (await client.get("/jobs/1")).text
    viewer = serve(resolver=lambda _r: READ_ONLY)
    assert (await viewer.get("/jobs/2/edit")).status_code == 403


# -- cron ----------------------------------------------------------------------------------
def test_cron_expressions_in_plain_words() -> None:
    assert describe("*/15 9-17 * * MON-FRI") == (
        "every 15 minutes from 09:00 to 17:59, Monday to Friday"
    )
    assert describe("30 2 * * *") == "every day at 02:30"
    assert describe("0 9 * * 1,3") == "every Monday and Wednesday at 09:00"
    assert describe("0 0 1 * *") == "on the 1st of every month at 00:00"
    assert describe("0 12 25 12 *") == "on 25 December at 12:00"
    assert describe("5 * * * *") == "every hour at :05"
    assert describe("@reboot") == "once, when the cluster's leader boots"
    assert describe("0 0 1 * MON") is None  # both day fields: shown as the expression
    assert describe("1-10 * * * *") is None


async def test_the_cron_page_shows_each_entry_in_words_with_its_ticks(
    seeded: Kerrera, serve: Any, sql: Any
) -> None:
    sql(
        "INSERT INTO kerrera_cron (name, last_tick) VALUES "
        "('app.Report */5 * * * *', timezone('UTC', now())), ('nightly-export', now()), "
        "('app.Stale 0 * * * *', timezone('UTC', now()) - interval '3 hours')"
    )
    page = await serve().get("/cron")
    assert page.status_code == 200
    row = page.text[page.text.index('data-cron="app.Report */5 * * * *"') :].split("</tr>")[0]
    assert "every 5 minutes" in row and "UTC (assumed)" in row
    assert re.search(r"\(in \d+m\)|\(in \d+s\)", row)  # the next tick, within five minutes
    assert "meta.cron_name%3A%22app.Report" in row  # its jobs, through the search
    assert "owed since" not in row
    other = page.text[page.text.index('data-cron="nightly-export"') :].split("</tr>")[0]
    assert '<code class="muted">?</code>' in other
    # Nobody evaluated this entry for 3 hours: its owed tick is flagged, the next is ahead.
    stale = page.text[page.text.index('data-cron="app.Stale 0 * * * *"') :].split("</tr>")[0]
    assert "owed since" in stale and re.search(r"\(in \d+[ms]\)", stale), stale


# -- every query of these pages can be served by an index ----------------------------------
async def test_the_new_pages_read_through_indexes(
    seeded: Kerrera, serve: Any, dsn: str, prefix: str, sql: Any
) -> None:
    from psycopg_pool import AsyncConnectionPool

    from kerrera.engine.statements import Statements

    # As in test_dashboard_queries: tables this small are rightly read whole, so
    # sequential scans are priced out; a plan that still has one has no index to use.
    async def no_seqscan(conn: Any) -> None:
        await conn.execute("SET enable_seqscan = off")

    import psycopg

    from kerrera.engine.migrations.web import create_dashboard_indexes

    with psycopg.connect(dsn, autocommit=True) as conn:  # (opt-in: `kerrera web indexes`)
        create_dashboard_indexes(conn, prefix)
    await write_stats(dsn, prefix)
    wf = await insert_workflow(seeded)
    fail(sql, "3, 4", "OSError: disk full")
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        dsn, min_size=1, max_size=2, open=False, kwargs={"autocommit": True},
        configure=no_seqscan,
    )  # fmt: skip
    await pool.open(wait=True)
    client = serve()
    web = client._transport.app.state.web  # type: ignore[attr-defined]
    await web.ready()
    web.dashboard = Dashboard(pool, prefix, explain=True)
    try:
        for path in ("/charts", "/charts?by=queue", "/charts?by=worker&window=24h", "/queues",
                     "/errors", "/cron", "/jobs/2/edit"):  # fmt: skip
            assert (await client.get(path)).status_code == 200, path
        form = {"csrf_token": await token(client, "/errors"), "do": "retry",
                "worker": "app.Thumb", "kind": "OSError"}  # fmt: skip
        assert (
            await client.post("/errors/actions", headers=SAME_SITE, data=form)
        ).status_code == 200
        plans = list(web.dashboard.plans)
        async with pool.connection() as conn:
            statements = Statements(prefix)
            for name, params in (("workflow_list", {"limit": 50}),
                                 ("workflow_jobs", {"id": wf.id, "names": None})):  # fmt: skip
                cur = await conn.execute(f"EXPLAIN {statements[name]}", params)
                plans.append((name, "\n".join(str(r[0]) for r in await cur.fetchall())))
    finally:
        await pool.close()
    assert any("kerrera_job_stats" in q for q, _ in plans)
    assert any("oban_jobs" in q for q, _ in plans)
    bad = [(q, p) for q, p in plans if re.search(r"Seq Scan on (oban_jobs|kerrera_\w+)\b", p)]
    assert not bad, bad[0]


async def test_a_mounted_dashboard_knows_its_nodes_crontab(make_app: Any, sql: Any) -> None:
    import httpx
    from support import flows

    from kerrera.web import kerrera_web

    crontab = [("0 9 * * 1-5", flows.step, {"timezone": "Europe/Paris", "name": "morning"})]
    app = make_app(crontab=crontab)
    await app.migrate()
    await app.start()
    web = kerrera_web(app)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://t")
    try:
        page = (await client.get("/cron")).text
    finally:
        await client.aclose()
        await web.state.web.close()
    row = page[page.index('data-cron="morning"') :].split("</tr>")[0]
    assert "Monday to Friday at 09:00" in row and "Europe/Paris" in row
    assert "other node" not in row
    # The next tick is a weekday at 09:00 in Paris: 07:00 or 08:00 UTC.
    assert re.search(r"\d{4}-\d\d-\d\d 0[78]:00:00Z", row), row


async def test_update_job_is_guarded_by_the_state(
    seeded: Kerrera, dsn: str, prefix: str, sql: Any
) -> None:
    sql("UPDATE oban_jobs SET state = 'executing', attempted_at = now() WHERE id = 1")
    sql("UPDATE oban_jobs SET state = 'suspended' WHERE id = 2")
    dash = await Dashboard.connect(dsn, prefix)
    try:
        assert await dash.update_job(1, priority=5) is None  # it started: left alone
        past = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=1)
        step = await dash.update_job(2, queue="later", scheduled_at=past)
        assert step is not None and step.state is JobState.SUSPENDED and step.queue == "later"
        moved = await dash.update_job(3, scheduled_at=past + timedelta(hours=1))
        assert moved is not None and moved.state is JobState.SCHEDULED
        assert (await dash.update_job(3, scheduled_at=past)).state is JobState.AVAILABLE  # type: ignore[union-attr]
        assert await dash.update_job(999, priority=1) is None
        with pytest.raises(ValueError, match="priority"):
            await dash.update_job(3, priority=10)
    finally:
        await dash.close()
    assert sql("SELECT priority, state::text FROM oban_jobs WHERE id = 1") == [(0, "executing")]
