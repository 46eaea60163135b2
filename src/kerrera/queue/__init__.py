"""The queue runtime: producers fetch and dispatch, the executor runs one job, the
ledger accounts for every job a producer holds."""

from kerrera.queue.executor import Executor
from kerrera.queue.ledger import Ledger
from kerrera.queue.producer import Producer, Threads
from kerrera.queue.threads import DaemonThreadPool

__all__ = ["DaemonThreadPool", "Executor", "Ledger", "Producer", "Threads"]
