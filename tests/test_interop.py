"""Jobs written the way an Elixir Oban node writes them run here, and ours read like theirs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from conftest import eventually
from support import scripted

from kerrera import JobState, Kerrera
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
