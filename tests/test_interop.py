"""Jobs written the way an Elixir Oban node writes them run here, and ours read like theirs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import eventually
from support import scripted

from kerrera import JobState, Kerrera, Unique
from kerrera.engine.statements import Statements
from kerrera.engine.unique import insert_unique
from kerrera.notifier import payload

OBAN_V14 = Path(__file__).parent / "support" / "oban_v14.sql"


async def test_runs_a_job_inserted_by_raw_sql_into_obans_table(dsn: str, prefix: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{prefix}"')
        conn.execute(f'SET search_path TO "{prefix}"')
        conn.execute(OBAN_V14.read_text())
        (job_id,) = conn.execute(
            "INSERT INTO oban_jobs (state, queue, worker, args, max_attempts, tags) "
            "VALUES ('available', 'default', 'support.scripted.Scripted', "
            '\'{"do": "record", "value": "from elixir"}\', 3, \'{interop}\') RETURNING id'
        ).fetchone()
        conn.execute('NOTIFY "' + prefix + '.oban_insert", \'{"queue":"default"}\'')
    app = Kerrera(dsn, prefix=prefix, queues={"default": 2})
    async with app:

        async def done() -> Any:
            job = await app.get_job(job_id)
            return job if job.state is JobState.COMPLETED else None

        job = await eventually(done)
    assert job.meta["return"] == "from elixir" and scripted.RUNS[0][0] == job_id
    with psycopg.connect(dsn, autocommit=True) as conn:
        (comment,) = conn.execute(
            "SELECT obj_description(%s::regclass, 'pg_class')", (f"{prefix}.oban_jobs",)
        ).fetchone()
    assert comment == "14"


async def test_rows_we_write_follow_obans_conventions(make_app: Any, sql: Any) -> None:
    app = make_app(queues={"default": 1})
    async with app:
        job = await app.insert(scripted.Scripted.new({"do": "cancel"}, tags=["Rig", "rig"]))
        await eventually(
            lambda: sql("SELECT state = 'cancelled' FROM oban_jobs WHERE id = %s", (job.id,))[0][0]
        )
    row = sql(
        "SELECT worker, tags, attempted_by, errors[1]->>'attempt', "
        "pg_typeof(inserted_at)::text, cancelled_at IS NOT NULL "
        "FROM oban_jobs WHERE id = %s",
        (job.id,),
    )[0]
    assert row[0] == "support.scripted.Scripted" and row[1] == ["rig"]
    assert row[2][0] == app.node and len(row[2]) == 2
    assert row[3] == "1" and row[4] == "timestamp without time zone" and row[5]


def test_payload_forms() -> None:
    small = {"queue": "media"}
    assert payload.encode(small) == '{"queue":"media"}'
    big = {"action": "scale", "queue": "q" * 600}
    packed = payload.encode(big)
    assert packed.startswith("Z:") and payload.decode(packed) == big
    legacy = packed[2:]
    assert legacy.startswith("H4sI") and payload.decode(legacy) == big


# -- unique jobs across the two sides ---------------------------------------------------

SCRIPTED = "support.scripted.Scripted"


def _elixir_insert(
    sql: Any,
    args: str,
    *,
    queue: str = "default",
    meta: str = "{}",
    state: str = "available",
    age: float = 0.0,
    delay: float = 0.0,
) -> int:
    """A row as Elixir Oban writes it for `Scripted` (its unique insert adds nothing to
    meta): `age` seconds old, due `delay` seconds from now."""
    rows = sql(
        "INSERT INTO oban_jobs (state, queue, worker, args, meta, inserted_at, scheduled_at) "
        "VALUES (%s, %s, %s, %s::jsonb, %s::jsonb, "
        "timezone('UTC', now()) - make_interval(secs => %s), "
        "timezone('UTC', now()) + make_interval(secs => %s)) RETURNING id",
        (state, queue, SCRIPTED, args, meta, age, delay),
    )
    return int(rows[0][0])


async def test_a_unique_insert_returns_the_job_elixir_inserted(make_app: Any, sql: Any) -> None:
    app = make_app()
    await app.migrate()
    elixir_id = _elixir_insert(sql, '{"n": 1}')
    again = await app.insert(scripted.Scripted.new({"n": 1}, unique=True))
    assert again.conflict and again.id == elixir_id
    assert "uniq_key" not in again.meta  # the row is returned as Elixir wrote it
    other = await app.insert(scripted.Scripted.new({"n": 2}, unique=True))
    assert not other.conflict
    assert sql("SELECT count(*) FROM oban_jobs")[0][0] == 2
    # and in a batch: the duplicate resolves to Elixir's row, the rest are inserted
    batch = await app.insert_all([scripted.Scripted.new({"n": n}, unique=True) for n in (1, 3)])
    assert [(j.conflict, j.id == elixir_id) for j in batch] == [(True, True), (False, False)]


@pytest.mark.parametrize(
    ("row", "job", "spec", "duplicate"),
    [
        pytest.param({"args": '{"user": 1, "x": "a"}'}, {"args": {"user": 1, "x": "b"}},
                     Unique(keys=["user"]), True, id="keys-equal"),
        pytest.param({"args": '{"user": 2, "x": "a"}'}, {"args": {"user": 1, "x": "a"}},
                     Unique(keys=["user"]), False, id="keys-differ"),
        pytest.param({"args": '{"x": "a"}'}, {"args": {"user": 1, "x": "a"}},
                     Unique(keys=["user"]), False, id="key-missing-on-the-row"),
        pytest.param({"args": '{"user": 1, "x": "a"}'}, {"args": {"user": 1}},
                     Unique(), False, id="whole-args-differ"),
        pytest.param({"args": '{"n": 1}', "meta": '{"otel": {"t": "1"}}'}, {"args": {"n": 1}},
                     Unique(fields=["worker", "args", "meta"]), True, id="meta-less-unkeyed"),
        pytest.param({"args": '{"n": 1}', "queue": "other"}, {"args": {"n": 1}},
                     Unique(), False, id="queue-differs"),
        pytest.param({"args": '{"n": 1}', "queue": "other"}, {"args": {"n": 2}},
                     Unique(fields=["worker"]), True, id="worker-only"),
        pytest.param({"args": '{"n": 1}', "state": "discarded"}, {"args": {"n": 1}},
                     Unique(), False, id="state-not-counted"),
        pytest.param({"args": '{"n": 1}', "state": "completed"}, {"args": {"n": 1}},
                     Unique(), True, id="completed-counted"),
        pytest.param({"args": '{"n": 1}', "age": 61}, {"args": {"n": 1}},
                     Unique(period=60), False, id="older-than-period"),
        pytest.param({"args": '{"n": 1}', "age": 86400}, {"args": {"n": 1}},
                     Unique(period=None), True, id="forever"),
        pytest.param({"args": '{"n": 1}', "delay": 500}, {"args": {"n": 1}},
                     Unique(period=60, timestamp="scheduled_at"), True,
                     id="scheduled-after-the-new-one"),
        pytest.param({"args": '{"n": 1}', "state": "scheduled", "delay": -100},
                     {"args": {"n": 1}}, Unique(period=60, timestamp="scheduled_at"), False,
                     id="scheduled-before-the-period"),
        pytest.param({"args": "{}", "meta": '{"tenant": "a", "x": 1}'},
                     {"meta": {"tenant": "a", "x": 2}},
                     Unique(fields=["worker", "meta"], keys=["tenant"]), True, id="meta-keys"),
    ],
)  # fmt: skip
async def test_an_elixir_duplicate_is_what_oban_would_call_one(
    make_app: Any, sql: Any, row: dict[str, Any], job: dict[str, Any], spec: Unique,
    duplicate: bool,
) -> None:  # fmt: skip
    app = make_app()
    await app.migrate()
    elixir_id = _elixir_insert(sql, **row)
    new = scripted.Scripted.new(job.get("args", {}), meta=job.get("meta", {}), unique=spec)
    saved = await app.insert(new)
    assert saved.conflict is duplicate and (saved.id == elixir_id) is duplicate


async def test_replace_applies_to_an_elixir_duplicate(make_app: Any, sql: Any) -> None:
    app = make_app()
    await app.migrate()
    elixir_id = _elixir_insert(sql, '{"v": 1}', state="scheduled", delay=3600)
    spec = Unique(period=None, fields=["worker"], replace=["args", "scheduled_at", "meta"])
    job = await app.insert(scripted.Scripted.new({"v": 2}, meta={"note": "hi"}, unique=spec))
    assert job.conflict and job.id == elixir_id
    assert job.args == {"v": 2} and job.state is JobState.AVAILABLE
    (args, state, meta) = sql("SELECT args, state::text, meta FROM oban_jobs")[0]
    # Kerrera's key stays out of Elixir's row: the unique index must not start covering it
    assert args == {"v": 2} and state == "available" and meta == {"note": "hi"}
    sql("UPDATE oban_jobs SET state = 'executing', attempt = 1 WHERE id = %s", (elixir_id,))
    left = await app.insert(scripted.Scripted.new({"v": 3}, unique=spec))
    assert left.conflict and left.args == {"v": 2}  # executing: not replaced


async def test_an_elixir_duplicate_made_due_by_replace_wakes_its_queue(
    make_app: Any, dsn: str, prefix: str, sql: Any
) -> None:
    app = make_app()
    await app.migrate()
    _elixir_insert(sql, '{"v": 1}', state="scheduled", delay=3600)
    spec = Unique(period=None, fields=["worker"], replace=["scheduled_at"])
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as listener:
        await listener.execute(f'LISTEN "{prefix}.oban_insert"')
        job = await app.insert(scripted.Scripted.new({"v": 2}, unique=spec))
        assert job.conflict and job.state is JobState.AVAILABLE
        heard = [n.payload async for n in listener.notifies(timeout=5, stop_after=1)]
    assert heard == ['{"queue":"default"}']


def _executed(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """The nodes of an EXPLAIN ANALYZE plan that ran (a branch switched off never does)."""
    nodes = [plan] if plan.get("Actual Loops", 0) > 0 else []
    for child in plan.get("Plans", []):
        nodes += _executed(child)
    return nodes


@pytest.mark.parametrize(
    ("spec", "meta", "index"),
    [
        (Unique(), {}, "oban_jobs_args_index"),
        (Unique(fields=["worker", "meta"], keys=["tenant"]), {"tenant": "t7"},
         "oban_jobs_meta_index"),
        # (either index of (state, queue, ...): Oban's, or the dashboard's of migration 8)
        (Unique(fields=["queue", "worker"]), {},
         "oban_jobs_state_queue_priority_scheduled_at_id_index|kerrera_jobs_state_queue_id_index"),
    ],
)  # fmt: skip
async def test_the_elixir_duplicate_lookup_uses_an_index(
    make_app: Any, dsn: str, prefix: str, sql: Any, spec: Unique, meta: dict[str, Any], index: str
) -> None:
    app = make_app()
    await app.migrate()
    sql(  # a table with some history: 20,000 Elixir rows over 50 queues, most finished
        "INSERT INTO oban_jobs (state, queue, worker, args, meta) "
        "SELECT CASE WHEN n % 10 = 0 THEN 'available' ELSE 'completed' END::oban_job_state, "
        "'q' || (n % 50), 'Elixir.Worker' || (n % 7), jsonb_build_object('n', n), "
        "jsonb_build_object('tenant', 't' || n) FROM generate_series(1, 20000) n"
    )
    sql("ANALYZE oban_jobs")
    job = scripted.Scripted.new({"n": 7}, queue="q7", meta=meta, unique=spec)
    statements = Statements(prefix)
    name, params, _row = next(insert_unique([job], statements.insert_channel))
    assert name == "find_duplicates"
    with psycopg.connect(dsn) as conn:  # run it for real, then roll it back
        (plan,) = conn.execute(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + statements[name], params
        ).fetchone()  # type: ignore[misc]
        conn.rollback()
    ran = _executed(plan[0]["Plan"])
    seq_scans = [
        (n.get("Relation Name"), n.get("Filter")) for n in ran if n["Node Type"] == "Seq Scan"
    ]
    assert not seq_scans, seq_scans
    indexes = {n["Index Name"] for n in ran if "Index Name" in n}
    assert indexes & set(index.split("|")), indexes
    others = {"oban_jobs_args_index", "oban_jobs_meta_index"} - set(index.split("|"))
    assert not indexes & others, indexes  # the lookup starts from one index only
