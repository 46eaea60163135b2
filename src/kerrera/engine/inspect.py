"""Read-mostly statements for operators (listing jobs, counting queues), mixed into
`PostgresEngine`. Their SQL lives in `sql/inspect.sql`."""

from __future__ import annotations


class InspectQueries:
    """Operator queries of the engine (listing and counting jobs, bulk selections)."""
