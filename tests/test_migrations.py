"""Migrations: up, down, version, the lock, and coexisting with an Elixir Oban table."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from kerrera import ConfigError, Kerrera, SchemaError
from kerrera.cli import main
from kerrera.engine.migrations import (
    LATEST_VERSION,
    current_version,
    migrate_down,
    migrate_up,
)
from kerrera.engine.migrations import runner as _runner

OBAN_V14 = Path(__file__).parent / "support" / "oban_v14.sql"


def _catalog(conn: psycopg.Connection[Any], prefix: str) -> dict[str, Any]:
    """What Oban owns in the schema: columns, constraints, enum, comment, its indexes."""
    q = lambda s, *p: conn.execute(s, p).fetchall()  # noqa: E731
    conn.execute("SET search_path TO public")  # so defaults print schema-qualified
    return {
        "columns": q(
            "SELECT column_name, data_type, udt_name, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_schema = %s "
            "AND table_name = 'oban_jobs' ORDER BY ordinal_position",
            prefix,
        ),
        "constraints": q(
            "SELECT conname, pg_get_constraintdef(c.oid), convalidated "
            "FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid "
            "JOIN pg_namespace n ON n.oid = r.relnamespace "
            "WHERE n.nspname = %s AND r.relname = 'oban_jobs' ORDER BY 1",
            prefix,
        ),
        "enum": q(
            "SELECT e.enumlabel FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid "
            "JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = %s "
            "AND t.typname = 'oban_job_state' ORDER BY e.enumsortorder",
            prefix,
        ),
        "comment": q("SELECT obj_description(%s::regclass, 'pg_class')", f"{prefix}.oban_jobs"),
        "indexes": q(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s "
            "AND tablename = 'oban_jobs' AND indexname LIKE 'oban%%' ORDER BY 1",
            prefix,
        ),
        "peers": q(
            "SELECT relpersistence FROM pg_class WHERE oid = %s::regclass", f"{prefix}.oban_peers"
        ),
    }


def _relations(conn: psycopg.Connection[Any], prefix: str) -> set[str]:
    """Tables, indexes and types left in the schema."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'i', 'p') UNION ALL "
        "SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
        "WHERE n.nspname = %s AND t.typtype = 'e'",
        (prefix, prefix),
    ).fetchall()
    return {name for (name,) in rows}


OBAN_OWN = {
    "oban_jobs", "oban_jobs_pkey", "oban_jobs_args_index", "oban_jobs_meta_index",
    "oban_jobs_state_queue_priority_scheduled_at_id_index",
    "oban_jobs_state_cancelled_at_index", "oban_jobs_state_discarded_at_index",
    "oban_peers", "oban_peers_pkey", "oban_job_state",
}  # fmt: skip


def _elixir_history(conn: psycopg.Connection[Any], prefix: str) -> None:
    """What an Elixir node that adopted the tables leaves: 100 jobs of three workers and
    its leader's row."""
    conn.execute(
        f'INSERT INTO "{prefix}".oban_jobs (state, queue, worker, args) '
        "SELECT 'completed', 'mail', CASE WHEN n <= 60 THEN 'MyApp.Mailer' "
        "WHEN n <= 90 THEN 'MyApp.Report' ELSE 'MyApp.Digest' END, '{}' "
        "FROM generate_series(1, 100) n"
    )
    conn.execute(
        f"INSERT INTO \"{prefix}\".oban_peers VALUES ('Oban', 'worker-1', "
        "timezone('UTC', now()), timezone('UTC', now()) + interval '30 seconds')"
    )


def test_down_keeps_obans_tables_once_an_elixir_node_used_them(dsn: str, prefix: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate_up(conn, prefix)  # Kerrera creates Oban's tables here...
        _elixir_history(conn, prefix)  # ...and an Elixir node adopts them
        assert migrate_down(conn, prefix, LATEST_VERSION) == list(range(LATEST_VERSION, 0, -1))
        assert current_version(conn, prefix) == 0
        # only Kerrera's own objects went: its tables, its two indexes, its version table
        assert _relations(conn, prefix) == OBAN_OWN
        count = f'SELECT count(*) FROM "{prefix}".oban_jobs'
        assert conn.execute(count).fetchone() == (100,)
        peers = f'SELECT name FROM "{prefix}".oban_peers'
        assert conn.execute(peers).fetchall() == [("Oban",)]


def test_dropping_obans_tables_takes_the_flag_and_refuses_what_they_hold(
    dsn: str, prefix: str
) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate_up(conn, prefix)
        _elixir_history(conn, prefix)
        everything = _relations(conn, prefix)
        with pytest.raises(SchemaError) as refused:
            migrate_down(conn, prefix, LATEST_VERSION, drop_oban_tables=True)
        message = str(refused.value)
        assert "100 job(s)" in message and "MyApp.Mailer: 60, MyApp.Report: 30" in message
        assert "'Oban' on worker-1" in message
        # refused before anything was reverted
        assert current_version(conn, prefix) == LATEST_VERSION
        assert _relations(conn, prefix) == everything
        conn.execute(f'DELETE FROM "{prefix}".oban_jobs')
        conn.execute(f'DELETE FROM "{prefix}".oban_peers')
        conn.execute(f"COMMENT ON TABLE \"{prefix}\".oban_jobs IS '15'")  # an Oban migrator
        with pytest.raises(SchemaError, match="version '15'"):
            migrate_down(conn, prefix, LATEST_VERSION, drop_oban_tables=True)
        conn.execute(f"COMMENT ON TABLE \"{prefix}\".oban_jobs IS '14'")
        migrate_down(conn, prefix, LATEST_VERSION, drop_oban_tables=True)
        assert _relations(conn, prefix) == set()


def test_a_job_inserted_after_the_check_still_stops_the_drop(
    dsn: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    check = _runner._check_oban_drop

    def check_then_an_elixir_insert(conn: psycopg.Connection[Any], *args: Any) -> None:
        check(conn, *args)
        conn.execute(f"INSERT INTO \"{prefix}\".oban_jobs (worker) VALUES ('MyApp.Late')")

    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate_up(conn, prefix)
        monkeypatch.setattr(_runner, "_check_oban_drop", check_then_an_elixir_insert)
        with pytest.raises(SchemaError, match=r"1 job\(s\) \(MyApp.Late: 1\)"):
            migrate_down(conn, prefix, LATEST_VERSION, drop_oban_tables=True)
        # the steps above 1 were reverted; version 1 and Oban's table with its job stay
        assert current_version(conn, prefix) == 1
        assert conn.execute(f'SELECT worker FROM "{prefix}".oban_jobs').fetchall() == [
            ("MyApp.Late",)
        ]


def test_the_flag_never_drops_tables_that_kerrera_did_not_create(dsn: str, prefix: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{prefix}"')
        conn.execute(f'SET search_path TO "{prefix}"')
        conn.execute(OBAN_V14.read_text())  # an Elixir node made them (still empty)
        migrate_up(conn, prefix)
        with pytest.raises(SchemaError, match="Kerrera did not create"):
            migrate_down(conn, prefix, LATEST_VERSION, drop_oban_tables=True)
        with pytest.raises(ConfigError, match="below version 1"):
            migrate_down(conn, prefix, 1, drop_oban_tables=True)
        migrate_down(conn, prefix, LATEST_VERSION)
        assert _relations(conn, prefix) == OBAN_OWN


def test_the_cli_says_what_it_kept_and_why_it_refused(
    dsn: str, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["migrate", "--dsn", dsn, "--prefix", prefix]
    assert main(base) == 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        _elixir_history(conn, prefix)
    capsys.readouterr()
    assert main([*base, "--down", str(LATEST_VERSION), "--drop-oban-tables"]) == 2
    err = capsys.readouterr().err
    assert "100 job(s)" in err and "MyApp.Mailer: 60" in err
    assert main([*base, "--down", str(LATEST_VERSION)]) == 0
    out = capsys.readouterr().out
    assert "now at version 0" in out and "kept Oban's tables" in out
    assert "--drop-oban-tables" in out


def test_up_down_up(dsn: str, prefix: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert current_version(conn, prefix) == 0
        assert migrate_up(conn, prefix) == list(range(1, LATEST_VERSION + 1))
        assert migrate_up(conn, prefix) == []
        first = _catalog(conn, prefix)
        assert first["comment"] == [("14",)]
        assert first["enum"][0] == ("available",) and len(first["enum"]) == 8
        assert migrate_down(conn, prefix, 1) == [LATEST_VERSION]
        assert current_version(conn, prefix) == LATEST_VERSION - 1
        rest = list(range(LATEST_VERSION - 1, 0, -1))
        assert migrate_down(conn, prefix, LATEST_VERSION, drop_oban_tables=True) == rest
        assert _relations(conn, prefix) == set()  # empty, and Kerrera's own: dropped
        migrate_up(conn, prefix)
        assert _catalog(conn, prefix) == first


def test_matches_the_layout_an_elixir_node_creates(dsn: str, prefix: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{prefix}"')
        conn.execute(f'SET search_path TO "{prefix}"')
        conn.execute(OBAN_V14.read_text())
        oban = _catalog(conn, prefix)
        migrate_up(conn, prefix)
        assert _catalog(conn, prefix) == oban  # nothing of Oban's changed
        migrate_down(conn, prefix, LATEST_VERSION)  # and going down leaves Oban's table
        assert _catalog(conn, prefix) == oban
    with psycopg.connect(dsn, autocommit=True) as conn:
        mine = f"{prefix}_k"
        try:
            migrate_up(conn, mine)
            made = _catalog(conn, mine)
        finally:
            conn.execute(f'DROP SCHEMA IF EXISTS "{mine}" CASCADE')
    # Kerrera's own creation is the same layout, catalog by catalog.
    strip = lambda c: {k: str(v).replace(mine, "S").replace(prefix, "S") for k, v in c.items()}  # noqa: E731
    assert strip(made) == strip(oban)


def test_concurrent_migrators_do_not_collide(dsn: str, prefix: str) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                migrate_up(conn, prefix)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert current_version(conn, prefix) == LATEST_VERSION


async def test_migrate_false_refuses_an_out_of_date_schema(dsn: str, prefix: str) -> None:
    app = Kerrera(dsn, prefix=prefix, migrate=False, queues={"default": 1})
    with pytest.raises(SchemaError, match="kerrera migrate"):
        await app.start()
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate_up(conn, prefix, target=1)
    with pytest.raises(SchemaError, match="version 1"):
        await app.start()
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate_up(conn, prefix)
    await app.start()
    await app.stop()


async def test_a_first_insert_inside_a_transaction_migrates_without_waiting_for_it(
    dsn: str, prefix: str
) -> None:
    # Migrating on a first insert made inside the caller's open transaction used to hang:
    # a concurrent index build waits for every open transaction, the caller's included.
    import asyncio

    from support.held import quick  # any importable worker

    app = Kerrera(dsn, prefix=prefix)
    try:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            # the caller's transaction is open, with a snapshot it keeps (repeatable read,
            # or a cursor still open in read committed)
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            await conn.execute("CREATE TEMP TABLE mine (x int)")
            await conn.execute("INSERT INTO mine VALUES (1)")
            job = await asyncio.wait_for(app.insert(quick.new({}), conn=conn), timeout=30)
            await conn.commit()
        assert job.id is not None
        assert (await app.get_job(job.id)) is not None
    finally:
        await app.stop()
