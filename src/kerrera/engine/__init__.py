"""The engine: the only code that speaks SQL.

Every job state transition the runtime needs (insert, fetch and ack, stage, rescue,
prune, retry, cancel, ...) as named, parameterised statements in `sql/*.sql`. Each
operation is written once, as a generator of steps (`steps.py`; the operations are in
`jobs.py`, `node.py`, `inspect.py`, `testing.py` and `unique.py`) that two engines only
execute: an async one (`PostgresEngine`) and a sync one (`SyncPostgresEngine`, for
`app.sync` and callers' sync connections). Also the schema migrations, the schema check
at start, and the embedded PostgreSQL used when no database is configured.
"""

from kerrera.engine.base import AckBatch, Engine
from kerrera.engine.postgres import PostgresEngine
from kerrera.engine.sync import SyncPostgresEngine

__all__ = ["AckBatch", "Engine", "PostgresEngine", "SyncPostgresEngine"]
