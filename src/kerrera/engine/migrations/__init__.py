"""Kerrera's versioned, reversible schema migrations.

Kerrera keeps its own version in `<prefix>.kerrera_migrations` and never touches the
`'14'` comment that Oban keeps on `oban_jobs`. Migration 1 creates Oban's v14 layout only
when it is missing, and remembers whether it did. Migrating down never drops Oban's
tables unless asked to (`drop_oban_tables`), and then only empty ones that Kerrera
created: an Elixir node may have adopted them. A run holds an advisory lock (each step
in a transaction of its own), so nodes that start together migrate once.
"""

from __future__ import annotations

from kerrera.engine.migrations.runner import (
    LATEST_VERSION,
    MIGRATIONS,
    Migration,
    current_version,
    migrate_down,
    migrate_up,
    oban_tables,
)

__all__ = [
    "LATEST_VERSION",
    "MIGRATIONS",
    "Migration",
    "current_version",
    "migrate_down",
    "migrate_up",
    "oban_tables",
]
