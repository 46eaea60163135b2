"""Kerrera: durable jobs for Python on PostgreSQL, sharing Oban's `oban_jobs` table.

Define workers, insert jobs (alone, in bulk, or inside your own transaction) and run them
on any number of nodes with per-queue concurrency, retries and scheduling.
"""

from kerrera._app import Kerrera
from kerrera._backoff import default_backoff
from kerrera._context import current_app
from kerrera._errors import (
    ConfigError,
    JobTimeoutError,
    KerreraError,
    SchemaError,
    UnknownWorkerError,
)
from kerrera._events import Event
from kerrera._job import Job, JobState
from kerrera._outcomes import Cancel, CancelJob, Record, Snooze, SnoozeJob
from kerrera._pubsub import Subscription
from kerrera._sync import SyncKerrera
from kerrera._unique import Unique
from kerrera._worker import Worker, resolve_worker, worker

__version__ = "0.1.0"

__all__ = [
    "Cancel",
    "CancelJob",
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
    "current_app",
    "default_backoff",
    "resolve_worker",
    "worker",
]
