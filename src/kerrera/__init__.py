"""Kerrera: durable jobs for Python on PostgreSQL, sharing Oban's `oban_jobs` table.

Define workers, insert jobs (alone, in bulk, or inside your own transaction) and run them
on any number of nodes with per-queue concurrency, retries and scheduling.
"""

from kerrera.app.facade import Kerrera
from kerrera.app.sync import SyncKerrera
from kerrera.core.backoff import default_backoff
from kerrera.core.batch import Batch
from kerrera.core.chain import Chain, chain_id
from kerrera.core.chunk import ChunkResult, ChunkWorker, chunk_worker
from kerrera.core.context import current_app
from kerrera.core.errors import (
    ConfigError,
    JobTimeoutError,
    KerreraError,
    SchemaError,
    UnknownWorkerError,
)
from kerrera.core.job import Job, JobState
from kerrera.core.outcomes import Cancel, CancelJob, Record, Snooze, SnoozeJob
from kerrera.core.unique import Unique
from kerrera.core.version import VERSION as __version__  # noqa: F401  (re-exported)
from kerrera.core.worker import Worker, resolve_worker, worker
from kerrera.core.workflow import Workflow
from kerrera.events.pubsub import Subscription
from kerrera.events.wire import Event

__all__ = [
    "Batch",
    "Cancel",
    "CancelJob",
    "Chain",
    "ChunkResult",
    "ChunkWorker",
    "ConfigError",
    "Event",
    "Job",
    "JobState",
    "JobTimeoutError",
    "Kerrera",
    "KerreraError",
    "Record",
    "SchemaError",
    "Snooze",
    "SnoozeJob",
    "Subscription",
    "SyncKerrera",
    "Unique",
    "UnknownWorkerError",
    "Worker",
    "Workflow",
    "chain_id",
    "chunk_worker",
    "current_app",
    "default_backoff",
    "resolve_worker",
    "worker",
]
