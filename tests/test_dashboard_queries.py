"""The dashboard's queries against the real database: counts (exact, then estimated past
the limit), keyset paging under inserts, every search filter, the index behind every
query, queues, errors, suggestions, the health check, and the job statistics that
nodes write for the charts."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from conftest import eventually
from psycopg_pool import AsyncConnectionPool

from kerrera import Job, worker
from kerrera.core.search import Search, parse_search
from kerrera.engine.dashboard import STATES, Count, Dashboard, DashboardTimeout
from kerrera.engine.migrations import migrate_down, migrate_up
from kerrera.engine.migrations.web import create_dashboard_indexes
from kerrera.engine.postgres import PostgresEngine
from kerrera.services.stats import JobStats

Sql = Callable[..., list[tuple[Any, ...]]]


@pytest.fixture
def schema(dsn: str, prefix: str, sql: Sql) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate_up(conn, prefix)
        create_dashboard_indexes(conn, prefix)  # (opt-in: what `kerrera web indexes` does)
    # Autovacuum's analyze must not refresh statistics behind a test's back.
    sql("ALTER TABLE oban_jobs SET (autovacuum_enabled = false)")
    return prefix


@pytest.fixture
async def dash(dsn: str, schema: str) -> AsyncIterator[Dashboard]:
    board = await Dashboard.connect(dsn, schema, count_timeout=30)
    yield board
    await board.close()


def add(sql: Sql, *rows: dict[str, Any], n: int = 1) -> list[int]:
    """Insert jobs directly (each row's columns, `n` copies of each); return their ids."""
    defaults = {
        "state": "completed", "queue": "default", "worker": "W.Default", "args": {},
        "meta": {}, "tags": [], "priority": 0, "node": None, "error": None,
    }  # fmt: skip
    docs = [{**defaults, **row} for row in rows for _ in range(n)]
    found = sql(
        """INSERT INTO oban_jobs (state, queue, worker, args, meta, tags, priority,
             attempted_by, errors, attempt)
           SELECT r.state::oban_job_state, r.queue, r.worker, r.args, r.meta, r.tags,
             r.priority, CASE WHEN r.node IS NULL THEN NULL ELSE ARRAY[r.node, 'p1'] END,
             CASE WHEN r.error IS NULL THEN ARRAY[]::jsonb[] ELSE ARRAY[jsonb_build_object(
               'at', '2026-01-02T03:04:05Z', 'attempt', 1, 'error', r.error)] END,
             CASE WHEN r.state IN ('available', 'scheduled') THEN 0 ELSE 1 END
           FROM ROWS FROM (jsonb_to_recordset(%s::jsonb) AS (state text, queue text,
             worker text, args jsonb, meta jsonb, tags text[], priority int, node text,
             error text)) WITH ORDINALITY AS r(state, queue, worker, args, meta, tags,
             priority, node, error, n)
           ORDER BY r.n
           RETURNING id""",
        (json.dumps(docs),),
    )
    return sorted(int(r[0]) for r in found)


# -- counts -------------------------------------------------------------------------------
async def test_counts_are_exact_up_to_the_limit_then_estimated(
    dsn: str, schema: str, sql: Sql
) -> None:
    add(sql, {"state": "completed"}, n=300)
    add(sql, {"state": "available", "queue": "q1"}, n=30)
    sql("ANALYZE oban_jobs")
    board = await Dashboard.connect(dsn, schema, exact_limit=100, count_timeout=30)
    try:
        counts = await board.state_counts()
        assert set(counts) == set(STATES)
        assert counts["available"] == Count(30, True)
        assert counts["executing"] == Count(0, True)
        completed = counts["completed"]
        assert not completed.exact and 250 <= completed.value <= 350
        assert completed.label.startswith("~")
        # The same switch under a search.
        searched = await board.state_counts(parse_search("queues:q1"))
        assert searched["available"] == Count(30, True)
        assert searched["completed"] == Count(0, True)
    finally:
        await board.close()
    plain = await Dashboard.connect(dsn, schema, count_timeout=30)  # default limit: 50,000
    try:
        assert (await plain.state_counts())["completed"] == Count(300, True)
    finally:
        await plain.close()


async def test_an_estimate_is_never_below_what_was_counted(dsn: str, schema: str, sql: Sql) -> None:
    sql("ANALYZE oban_jobs")  # statistics of an empty table: the estimate is stale
    add(sql, {"state": "discarded"}, n=150)
    board = await Dashboard.connect(dsn, schema, exact_limit=100, count_timeout=30)
    try:
        count = (await board.state_counts())["discarded"]
        assert not count.exact and count.value >= 101
    finally:
        await board.close()


def test_count_labels() -> None:
    assert Count(12345, True).label == "12,345"
    assert Count(10_000_000, False).label == "~10,000,000"


# -- paging -------------------------------------------------------------------------------
async def test_keyset_paging_is_stable_under_inserts(dash: Dashboard, sql: Sql) -> None:
    first = add(sql, {"state": "completed"}, n=25)
    page1 = await dash.list_jobs("completed", limit=10)
    assert [j.id for j in page1.jobs] == first[::-1][:10]
    assert page1.newer is None and page1.older == first[-10]
    newer = add(sql, {"state": "completed"}, n=5)  # arrive while the operator reads
    page2 = await dash.list_jobs("completed", limit=10, older_than=page1.older)
    page3 = await dash.list_jobs("completed", limit=10, older_than=page2.older)
    assert [j.id for j in page2.jobs] == first[::-1][10:20]
    assert [j.id for j in page3.jobs] == first[::-1][20:]
    assert page3.older is None
    seen = [j.id for p in (page1, page2, page3) for j in p.jobs]
    assert sorted(seen) == first  # each job once, none skipped
    # Back from page 2: page 1 exactly, and now with newer jobs above it.
    back = await dash.list_jobs("completed", limit=10, newer_than=page2.newer)
    assert [j.id for j in back.jobs] == [j.id for j in page1.jobs]
    assert back.newer is not None
    top = await dash.list_jobs("completed", limit=10, newer_than=back.newer)
    assert [j.id for j in top.jobs] == newer[::-1]
    assert top.newer is None


async def test_paging_only_lists_the_state_asked(dash: Dashboard, sql: Sql) -> None:
    done = add(sql, {"state": "completed"}, n=3)
    add(sql, {"state": "available"}, n=3)
    page = await dash.list_jobs("completed")
    assert sorted(j.id for j in page.jobs) == done
    assert all(j.state == "completed" for j in page.jobs)


# -- search -------------------------------------------------------------------------------
@pytest.fixture
def corpus(sql: Sql) -> dict[str, int]:
    """Five jobs that each search below tells apart (plus an available one)."""
    rows = {
        "a": {"queue": "mail", "worker": "W.Mailer", "tags": ["vip"], "node": "n1",
              "priority": 0, "args": {"user": {"id": 7}}, "meta": {"batch_id": "abc"}},
        "b": {"queue": "media", "worker": "W.Thumbs", "node": "n2", "priority": 1,
              "args": {"user": {"id": "7"}}},
        "c": {"queue": "mail", "worker": "W.Thumbs", "tags": ["bulk", "vip"], "priority": 2,
              "args": {"user": {"id": 8}, "ids": [7, 9]}, "meta": {"batch_id": "abd"}},
        "d": {"queue": "other", "worker": "W.Other", "priority": 3,
              "args": {"flag": True, "note": "a b,c", "ratio": 1.5}, "meta": {"x": None}},
        "e": {"queue": "mail", "worker": "W.Mailer", "tags": ["vip"], "node": "n1"},
    }  # fmt: skip
    ids = {name: add(sql, row)[0] for name, row in rows.items()}
    ids["live"] = add(sql, {**rows["a"], "state": "available", "node": None})[0]
    return ids


SEARCHES = [
    ("queues:mail", "ace"),
    ("queues:mail,media", "abce"),
    ("workers:W.Thumbs", "bc"),
    ("tags:vip", "ace"),
    ("tags:bulk,zzz", "c"),
    ("nodes:n1,n2", "abe"),
    ("priorities:1,3", "bd"),
    ("args.user.id:7", "ab"),  # the number 7 and the text "7"
    ("args.user.id:8", "c"),
    ("args.flag:true", "d"),
    ("args.ratio:1.5", "d"),
    ('args.note:"a b,c"', "d"),
    ("meta.batch_id:abc", "a"),
    ("meta.batch_id:abc,abd", "ac"),
    ("meta.x:null", "d"),
    ("queues:mail tags:vip priorities:2", "c"),
    ("args.user.id:7 queues:media", "b"),
    ("queues:nope", ""),
    ("args.user.id:x');DROP_TABLE_oban_jobs;--", ""),
]


@pytest.mark.parametrize(("text", "expected"), SEARCHES)
async def test_every_search_filter(
    dash: Dashboard, corpus: dict[str, int], text: str, expected: str
) -> None:
    search = parse_search(text)
    want = sorted(corpus[name] for name in expected)
    page = await dash.list_jobs("completed", search, limit=50)
    assert sorted(j.id for j in page.jobs) == want
    assert (await dash.state_counts(search))["completed"] == Count(len(want), True)
    upto = await dash.last_id()
    counted = await dash.count_matching("completed", search, upto_id=upto, cap=100)
    assert counted == Count(len(want), True)
    ids = await dash.match_ids("completed", search, after_id=0, upto_id=upto, limit=100)
    assert ids == want


async def test_ids_search_and_bulk_bounds(dash: Dashboard, corpus: dict[str, int]) -> None:
    a, d = corpus["a"], corpus["d"]
    search = parse_search(f"ids:{a},{d}")
    assert sorted(j.id for j in (await dash.list_jobs("completed", search)).jobs) == [a, d]
    # Chunks walk up by id and stop at the bound fixed at the dry run.
    assert await dash.match_ids(None, Search(), after_id=a, upto_id=d, limit=2) == [
        corpus["b"],
        corpus["c"],
    ]
    everything = await dash.count_matching(None, None, upto_id=d, cap=100)
    assert everything == Count(4, True)


# -- EXPLAIN ------------------------------------------------------------------------------
async def test_every_query_can_be_served_by_an_index(
    dsn: str, schema: str, corpus: dict[str, int], sql: Sql
) -> None:
    # A test table is small enough that the planner rightly prefers reading it whole;
    # with sequential scans priced out, a plan that still reads oban_jobs sequentially
    # has no index to use. (bench/web_latency.py checks plain plans on 10M rows.)
    async def no_seqscan(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute("SET enable_seqscan = off")

    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        dsn, min_size=1, max_size=2, open=False, kwargs={"autocommit": True},
        configure=no_seqscan,
    )  # fmt: skip
    await pool.open(wait=True)
    board = Dashboard(pool, schema, explain=True, count_timeout=30)
    try:
        await board.state_counts()
        for text, _ in SEARCHES:
            search = parse_search(text)
            await board.state_counts(search)
            await board.list_jobs("completed", search)
            await board.match_ids("completed", search, after_id=0, upto_id=10**9, limit=10)
        page = await board.list_jobs("completed", limit=2)
        await board.list_jobs("completed", limit=2, older_than=page.older)
        await board.list_jobs("completed", limit=2, newer_than=corpus["a"])
        await board.job(corpus["a"])
        await board.worker_jobs("W.Mailer", exclude=corpus["a"])
        await board.queue_counts()
        await board.error_groups()
        await board.suggest("workers")
        await board.last_id()
    finally:
        await pool.close()
    touching = [(q, p) for q, p in board.plans if "oban_jobs" in q]
    assert len(touching) > 60
    bad = [(q, p) for q, p in touching if re.search(r"Seq Scan on oban_jobs\b", p)]
    assert not bad, bad[0][1]


# -- one job, queues, errors, suggestions -------------------------------------------------
async def test_job_detail_and_the_workers_other_jobs(
    dash: Dashboard, corpus: dict[str, int], sql: Sql
) -> None:
    job = await dash.job(corpus["a"])
    assert job is not None and job.args == {"user": {"id": 7}}
    assert job.attempted_by == ["n1", "p1"] and job.meta == {"batch_id": "abc"}
    assert await dash.job(10**12) is None
    others = await dash.worker_jobs("W.Mailer", exclude=corpus["a"])
    assert [j.id for j in others] == [corpus["live"], corpus["e"]]  # newest first
    assert [j.id for j in await dash.worker_jobs("W.Mailer", limit=1)] == [corpus["live"]]


async def test_queue_counts_per_state_with_estimates_past_the_cap(
    dash: Dashboard, sql: Sql
) -> None:
    add(sql, {"state": "available", "queue": "big"}, n=40)
    add(sql, {"state": "executing", "queue": "big"}, n=2)
    add(sql, {"state": "scheduled", "queue": "small"}, n=3)
    add(sql, {"state": "completed", "queue": "done"}, n=5)  # finished: not a queue row
    sql("ANALYZE oban_jobs")
    rows = {q.queue: q.counts for q in await dash.queue_counts(cap=10)}
    assert set(rows) == {"big", "small"}
    assert rows["small"]["scheduled"] == Count(3, True)
    assert rows["small"]["available"] == Count(0, True)
    assert rows["big"]["executing"] == Count(2, True)
    assert not rows["big"]["available"].exact and rows["big"]["available"].value >= 11
    exact = {q.queue: q.counts for q in await dash.queue_counts()}
    assert exact["big"]["available"] == Count(40, True)


async def test_errors_are_grouped_by_worker_and_exception_type(dash: Dashboard, sql: Sql) -> None:
    trace = 'Traceback (most recent call last):\n  File "w.py", line 3\nValueError: bad id\n'
    add(sql, {"state": "discarded", "worker": "W.A", "error": trace}, n=3)
    add(sql, {"state": "retryable", "worker": "W.A", "error": "ValueError: other"})
    add(sql, {"state": "retryable", "worker": "W.A", "error": "RuntimeError: boom"})
    add(sql, {"state": "discarded", "worker": "W.E", "error": "** (ArgumentError) nope"})
    add(sql, {"state": "cancelled", "worker": "W.C", "error": "(Cancelled) stop"})
    add(sql, {"state": "completed", "worker": "W.A"})
    groups = await dash.error_groups()
    got = {(g.worker, g.kind): g.count for g in groups}
    assert got == {("W.A", "ValueError"): 4, ("W.A", "RuntimeError"): 1,
                   ("W.E", "ArgumentError"): 1}  # fmt: skip
    first = groups[0]
    assert (first.worker, first.kind) == ("W.A", "ValueError")
    assert first.message == "ValueError: other"  # the newest job's message
    assert first.last_at is not None and first.last_at.year == 2026


async def test_suggestions_come_from_recent_jobs(dash: Dashboard, corpus: dict[str, int]) -> None:
    assert await dash.suggest("queues") == ["mail", "media", "other"]
    assert await dash.suggest("workers", "W.M") == ["W.Mailer"]
    assert await dash.suggest("tags") == ["vip", "bulk"]
    assert await dash.suggest("nodes") == ["n1", "n2"]
    assert await dash.suggest("args", limit=2) == ["user", "flag"]
    assert await dash.suggest("meta") == ["batch_id", "x"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda d: d.list_jobs("bogus"), "option 'state' must be one of"),
        (lambda d: d.list_jobs("completed", limit=0), "option 'limit'"),
        (lambda d: d.list_jobs("completed", older_than=5, newer_than=1), "not both"),
        (lambda d: d.list_jobs("completed", older_than=-1), "option 'older_than'"),
        (lambda d: d.job(0), "option 'job_id'"),
        (lambda d: d.suggest("args; DROP"), "option 'field'"),
        (lambda d: d.chart(by="node"), "option 'by'"),
        (lambda d: d.chart(window=timedelta(days=30)), "option 'window'"),
        (lambda d: d.count_matching("nope", None, upto_id=1, cap=1), "option 'state'"),
    ],
)
async def test_bad_options_are_refused_by_name(dash: Dashboard, call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await call(dash)


async def test_bad_construction_options(dsn: str, schema: str) -> None:
    with pytest.raises(ValueError, match="option 'exact_limit'"):
        await Dashboard.connect(dsn, schema, exact_limit=0)
    with pytest.raises(ValueError, match="option 'count_timeout'"):
        await Dashboard.connect(dsn, schema, count_timeout=0)


async def test_a_query_past_its_time_limit_is_cancelled(dsn: str, schema: str, sql: Sql) -> None:
    board = await Dashboard.connect(dsn, schema, query_timeout=0.3)
    try:
        with psycopg.connect(dsn) as locker:  # a transaction holds the table
            locker.execute(f'LOCK TABLE "{schema}".oban_jobs IN ACCESS EXCLUSIVE MODE')
            with pytest.raises(DashboardTimeout, match="option 'query_timeout'"):
                await board.list_jobs("completed")
            with pytest.raises(DashboardTimeout):
                await board.state_counts()
        assert (await board.list_jobs("completed")).jobs == []  # the pool is fine after
    finally:
        await board.close()


# -- doctor -------------------------------------------------------------------------------
async def test_doctor_reports_missing_indexes_and_stale_statistics(
    dash: Dashboard, sql: Sql
) -> None:
    add(sql, {"state": "completed"}, n=50)
    sql("ANALYZE oban_jobs")
    findings = await dash.doctor()
    assert all(f.level == "ok" for f in findings), findings
    sql("DROP INDEX kerrera_jobs_tags_index")
    sql("UPDATE oban_jobs SET priority = 1")
    add(sql, {"state": "completed"}, n=1200)

    async def stale() -> bool:
        found = {f.subject: f for f in await dash.doctor()}
        table = next(f for s, f in found.items() if s.endswith("oban_jobs"))
        return table.level == "warning" and "stale" in table.message

    await eventually(stale, timeout=15)
    found = {f.subject: f for f in await dash.doctor()}
    assert found["kerrera_jobs_tags_index"].level == "warning"  # (opt-in)
    assert found["kerrera_jobs_tags_index"].fix == "kerrera web indexes"
    table = next(f for s, f in found.items() if s.endswith("oban_jobs"))
    assert table.fix.startswith("ANALYZE")


async def test_doctor_on_a_schema_without_jobs_table(dsn: str, prefix: str) -> None:
    board = await Dashboard.connect(dsn, prefix)
    try:
        assert [f.level for f in await board.doctor()] == ["error"]
    finally:
        await board.close()


def test_migration_8_goes_down_and_up_and_the_indexes_are_opt_in(
    dsn: str, schema: str, sql: Sql
) -> None:
    def names() -> set[str]:
        rows = sql("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")
        return {r[0] for r in rows}

    assert "kerrera_jobs_state_id_index" in names()  # (built by the fixture)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert migrate_down(conn, schema) == [8]
        assert "kerrera_jobs_state_id_index" not in names()
        assert sql("SELECT to_regclass('kerrera_job_stats')") == [(None,)]
        assert migrate_up(conn, schema) == [8]
        # the migration makes the stats table only: the indexes cost every write
        assert sql("SELECT to_regclass('kerrera_job_stats') IS NOT NULL") == [(True,)]
        assert "kerrera_jobs_tags_index" not in names()
        create_dashboard_indexes(conn, schema)
    assert "kerrera_jobs_tags_index" in names()


# -- job statistics and charts ------------------------------------------------------------
def _stop(node: str, queue: str, worker_name: str, state: str, ms: float, queue_ms: float):  # type: ignore[no-untyped-def]
    meta = {"node": node, "queue": queue, "worker": worker_name, "state": state}
    return "job.stop", {"duration": ms / 1000, "queue_time": queue_ms / 1000}, meta


async def test_stats_are_counted_in_memory_and_flushed_in_one_upsert(dsn: str, schema: str) -> None:
    engine = PostgresEngine(dsn, schema)
    await engine.open()
    board = await Dashboard.connect(dsn, schema, count_timeout=30)
    try:
        stats = JobStats(engine, "n1", interval=60)
        for _ in range(90):
            stats.record(*_stop("n1", "mail", "W.A", "completed", 3.0, 1.0))
        for _ in range(10):
            stats.record(*_stop("n1", "mail", "W.A", "retryable", 900.0, 1.0))
        stats.record(*_stop("n1", "media", "W.B", "cancelled", 1.0, 1.0))
        stats.record(*_stop("n1", "media", "W.B", "snoozed", 1.0, 1.0))
        stats.record(*_stop("other-node", "mail", "W.A", "completed", 1.0, 1.0))
        # Two (queue, worker) pairs, each also summed per queue and overall, at two
        # resolutions: 2 x (2 + 2 + 1) rows, in one statement.
        assert await stats.flush() == 10
        assert await stats.flush() == 0
        stats.record(*_stop("n1", "mail", "W.A", "discarded", 3.0, 1.0))
        assert await stats.flush() == 6  # added to the same buckets' rows

        points = await board.chart(window=timedelta(minutes=5), by="queue")
        by_key = {p.key: p for p in points}
        mail = by_key["mail"]
        assert (mail.completed, mail.failed, mail.cancelled, mail.other) == (90, 11, 0, 0)
        assert mail.exec_ms.p50 is not None and 2.4 <= mail.exec_ms.p50 <= 3.6  # within 20%
        assert mail.exec_ms.p95 is not None and 720 <= mail.exec_ms.p95 <= 1080
        media = by_key["media"]
        assert (media.completed, media.cancelled, media.other) == (0, 1, 1)
        total = await board.chart(window=timedelta(minutes=5))
        assert sum(p.completed for p in total) == 90 and {p.key for p in total} == {""}
        only_b = await board.chart(window=timedelta(minutes=5), by="worker", workers=["W.B"])
        assert {p.key for p in only_b} == {"W.B"}
        by_queue = await board.chart(window=timedelta(minutes=5), queues=["mail", "media"])
        assert sum(p.completed + p.cancelled for p in by_queue) == 91
        day = await board.chart(window=timedelta(hours=24), by="queue")  # 15-minute rows
        assert sum(p.failed for p in day if p.key == "mail") == 11
        assert all(p.at.minute % 15 == 0 and p.at.second == 0 for p in day)
    finally:
        await board.close()
        await engine.close()


@worker(queue="default")
async def quick(job: Job) -> None:
    """Finishes at once."""


async def test_a_running_node_writes_stats_as_jobs_finish(
    make_app: Any, dsn: str, prefix: str
) -> None:
    app = make_app(queues={"default": 2}, stats_interval=0.2)
    async with app:
        await app.insert_all([quick.new({"n": i}) for i in range(3)])
        board = await Dashboard.connect(dsn, prefix)
        try:

            async def written() -> bool:
                points = await board.chart(window=timedelta(minutes=5), by="worker")
                return sum(p.completed for p in points if p.key == quick.name) == 3

            await eventually(written, timeout=15)
        finally:
            await board.close()


def test_stats_can_be_turned_off(make_app: Any) -> None:
    from kerrera import ConfigError

    assert make_app(stats_interval=None).config.stats_interval is None
    with pytest.raises(ConfigError, match="stats_interval"):
        make_app(stats_interval=0)
