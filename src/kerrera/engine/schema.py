"""Bringing the schema up to date, or refusing an out-of-date one, at start."""

from __future__ import annotations

import psycopg

from kerrera.core.errors import SchemaError
from kerrera.engine.migrations import LATEST_VERSION, current_version, migrate_up


def migrate_sync(dsn: str, prefix: str) -> list[int]:
    """Apply missing migrations (under the migration lock); return those applied."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return migrate_up(conn, prefix)


def check_schema(dsn: str, prefix: str) -> None:
    """Raise `SchemaError`, naming the command to run, when the schema is out of date."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        version = current_version(conn, prefix)
    if version < LATEST_VERSION:
        raise SchemaError(
            f"the Kerrera schema in {prefix!r} is at version {version}, this Kerrera needs "
            f"{LATEST_VERSION}: run `kerrera migrate` (or start with migrate=True)"
        )
