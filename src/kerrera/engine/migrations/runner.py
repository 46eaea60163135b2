"""Applying and reverting migrations on a psycopg (sync) connection."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg

from kerrera.core.errors import ConfigError, SchemaError
from kerrera.core.options import check_prefix
from kerrera.engine.migrations import compose as compose_sql
from kerrera.engine.migrations import steps as step_sql
from kerrera.engine.migrations import web as web_sql
from kerrera.engine.migrations import workflows as workflow_sql

log = logging.getLogger("kerrera.engine.migrations")


@dataclass(frozen=True)
class Migration:
    """One numbered step: `up` returns a note kept for `down` (what it created)."""

    version: int
    description: str
    up: Callable[[Any, str], str]
    down: Callable[[Any, str, str], None]
    #: False for steps that cannot run in a transaction (CREATE INDEX CONCURRENTLY).
    transactional: bool = True


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "Oban v14 jobs and peers tables (if absent)", step_sql.up_1, step_sql.down_1),
    Migration(
        2,
        "partial index of scheduled/retryable jobs by due time",
        step_sql.up_2,
        step_sql.down_2,
        transactional=False,
    ),
    Migration(3, "producer heartbeats for the lifeline", step_sql.up_3, step_sql.down_3),
    Migration(
        4, "unique index of unique jobs' keys", step_sql.up_4, step_sql.down_4, transactional=False
    ),
    Migration(5, "queue control, cron ticks and producer state", step_sql.up_5, step_sql.down_5),
    Migration(
        6,
        "workflows: tables, the release trigger, an index of steps by workflow",
        workflow_sql.up_6,
        workflow_sql.down_6,
        transactional=False,
    ),
    Migration(7, "batches and chains", compose_sql.up_7, compose_sql.down_7, transactional=False),
    Migration(8, "dashboard indexes, job stats", web_sql.up_8, web_sql.down_8, transactional=False),
)
LATEST_VERSION = MIGRATIONS[-1].version
#: How long a migrator waits for another one to finish.
LOCK_TIMEOUT = 600.0

_BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS {p};
CREATE TABLE IF NOT EXISTS {p}.kerrera_migrations (
  version integer PRIMARY KEY,
  description text NOT NULL,
  note text NOT NULL DEFAULT '',
  applied_at timestamp NOT NULL DEFAULT timezone('UTC', now())
);
"""


def _quoted(prefix: str) -> str:
    return f'"{check_prefix(prefix)}"'


def current_version(conn: psycopg.Connection[Any], prefix: str = "public") -> int:
    """The highest Kerrera migration applied in `prefix` (0 when none)."""
    p = _quoted(prefix)
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{p}.kerrera_migrations",))
    if not row.fetchone()[0]:  # type: ignore[index]
        return 0
    cur = conn.execute(f"SELECT coalesce(max(version), 0) FROM {p}.kerrera_migrations")
    return int(cur.fetchone()[0])  # type: ignore[index]


@contextmanager
def _migration_lock(conn: psycopg.Connection[Any], prefix: str) -> Iterator[None]:
    """A session advisory lock: concurrent migrators queue up behind it and then find the
    work done. Polled rather than waited on: a session blocked in `pg_advisory_lock` holds
    an open transaction, which a `CREATE INDEX CONCURRENTLY` of the lock holder would wait
    for in turn."""
    if not conn.autocommit:
        raise ValueError("migrations need a connection in autocommit mode")
    key = f"kerrera.migrate.{prefix}"
    deadline = time.monotonic() + LOCK_TIMEOUT
    while not conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()[0]:  # type: ignore[index]
        if time.monotonic() > deadline:
            raise SchemaError(
                f"another migration of {prefix!r} held the lock for {LOCK_TIMEOUT:.0f}s"
            )
        time.sleep(0.1)
    try:
        yield
    finally:
        conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))


def migrate_up(
    conn: psycopg.Connection[Any], prefix: str = "public", target: int | None = None
) -> list[int]:
    """Apply missing migrations up to `target` (default: latest); return those applied.

    `conn` must be in autocommit mode: each step runs in its own transaction, except the
    steps that build indexes concurrently (so that a busy table is never blocked)."""
    p = _quoted(prefix)
    target = LATEST_VERSION if target is None else target
    applied: list[int] = []
    with _migration_lock(conn, prefix):
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(_BOOTSTRAP.format(p=p))
        # Every missing version up to the target, not only those above the highest: a
        # schema migrated by a build that lacked a version in between still gets it.
        done = {row[0] for row in conn.execute(f"SELECT version FROM {p}.kerrera_migrations")}
        for step in MIGRATIONS:
            if step.version not in done and step.version <= target:
                with _step(conn, step), conn.cursor() as cur:
                    note = step.up(cur, p)
                with conn.transaction():
                    conn.execute(
                        f"INSERT INTO {p}.kerrera_migrations (version, description, note) "
                        "VALUES (%s, %s, %s)",
                        (step.version, step.description, note),
                    )
                log.info("migrated %s up to version %d", prefix, step.version)
                applied.append(step.version)
    return applied


def migrate_down(
    conn: psycopg.Connection[Any],
    prefix: str = "public",
    steps: int = 1,
    *,
    drop_oban_tables: bool = False,
) -> list[int]:
    """Revert the last `steps` migrations; return the versions reverted.

    Reverting version 1 removes Kerrera's last objects (its version table included) and
    leaves Oban's `oban_jobs`, `oban_peers` and `oban_job_state` where they are: an
    Elixir node may share them. `drop_oban_tables=True` drops them too, only if Kerrera
    created them and they are unused (no job, no leader's row, Kerrera's version
    comment); otherwise it raises `SchemaError` naming what they hold, before reverting
    anything.
    """
    if steps < 1:
        raise ValueError("steps must be >= 1")
    p = _quoted(prefix)
    reverted: list[int] = []
    with _migration_lock(conn, prefix):
        version = current_version(conn, prefix)
        todo = [m for m in reversed(MIGRATIONS) if m.version <= version][:steps]
        notes = _notes(conn, p) if version else {}
        if drop_oban_tables:
            _check_oban_drop(conn, prefix, [m.version for m in todo], notes.get(1, ""))
        for step in todo:
            with _step(conn, step), conn.cursor() as cur:
                step.down(cur, p, notes.get(step.version, ""))
                if step.version == 1 and drop_oban_tables:
                    step_sql.drop_oban_tables(cur, p, notes.get(1, ""))
            with conn.transaction():
                conn.execute(
                    f"DELETE FROM {p}.kerrera_migrations WHERE version = %s", (step.version,)
                )
            log.info("migrated %s down from version %d", prefix, step.version)
            reverted.append(step.version)
        if 1 in reverted:
            conn.execute(f"DROP TABLE IF EXISTS {p}.kerrera_migrations")
            if not drop_oban_tables:
                log.info("kept Oban's tables in %s (pass drop_oban_tables to drop them)", prefix)
    return reverted


def oban_tables(conn: psycopg.Connection[Any], prefix: str = "public") -> list[str]:
    """Oban's tables and enum type present in `prefix` (what a down migration keeps)."""
    with conn.cursor() as cur:
        return step_sql.oban_tables(cur, _quoted(prefix))


def _notes(conn: psycopg.Connection[Any], p: str) -> dict[int, str]:
    rows = conn.execute(f"SELECT version, note FROM {p}.kerrera_migrations").fetchall()
    return {int(v): str(n) for v, n in rows}


def _check_oban_drop(
    conn: psycopg.Connection[Any], prefix: str, versions: list[int], note: str
) -> None:
    """Refuse `drop_oban_tables` up front: when the run stops above version 1, or when
    the tables are in use (checked again, under a lock, just before the drop)."""
    if not versions:
        raise ConfigError(
            f"option 'drop_oban_tables': Kerrera's schema is not installed in {prefix!r}, "
            "so nothing shows that Kerrera created Oban's tables there; drop them by hand "
            "if no Elixir node needs them"
        )
    if 1 not in versions:
        raise ConfigError(
            "option 'drop_oban_tables' applies only to a down migration below version 1 "
            f"(this one reverts {versions})"
        )
    with conn.cursor() as cur:
        reasons = step_sql.oban_tables_in_use(cur, _quoted(prefix), note)
    if reasons:
        raise SchemaError(step_sql.refusal(_quoted(prefix), reasons) + "; nothing was reverted")


@contextmanager
def _step(conn: psycopg.Connection[Any], step: Migration) -> Iterator[None]:
    if step.transactional:
        with conn.transaction():
            yield
    else:
        yield
