"""Migrations: up, down, version, the lock, and coexisting with an Elixir Oban table."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from kerrera import Kerrera, SchemaError
from kerrera.migrations import LATEST_VERSION, current_version, migrate_down, migrate_up

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
        assert migrate_down(conn, prefix, LATEST_VERSION) == list(range(LATEST_VERSION - 1, 0, -1))
        gone = conn.execute("SELECT to_regclass(%s)", (f"{prefix}.oban_jobs",)).fetchone()
        assert gone == (None,)
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
