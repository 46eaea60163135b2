"""The queue runtime: producers fetch and dispatch, the executor runs one job."""

from kerrera.queue.executor import Executor
from kerrera.queue.producer import Producer
from kerrera.queue.threads import DaemonThreadPool

__all__ = ["DaemonThreadPool", "Executor", "Producer"]
