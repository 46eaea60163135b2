"""Kerrera's versioned, reversible schema migrations.

Kerrera keeps its own version in `<prefix>.kerrera_migrations` and never touches the
`'14'` comment that Oban keeps on `oban_jobs`. Migration 1 creates Oban's v14 layout only
when it is missing, and remembers whether it did, so that migrating down never drops a
table that an Elixir Oban created. All steps of one run happen in one transaction under
an advisory lock, so nodes that start together migrate once.
"""

from __future__ import annotations

from kerrera.migrations._runner import (
    LATEST_VERSION,
    MIGRATIONS,
    Migration,
    current_version,
    migrate_down,
    migrate_up,
)

__all__ = [
    "LATEST_VERSION",
    "MIGRATIONS",
    "Migration",
    "current_version",
    "migrate_down",
    "migrate_up",
]
