"""The queue runtime: everything that runs jobs on a node.

A producer per queue fetches up to its limit and bundles acks (`producer.py`), its
ledger accounts for every job it holds (`ledger.py`), the executor runs one job and maps
its outcome (`executor.py`), chunk workers' jobs are collected into chunks and run in
one call (`chunks.py`), sync workers run on daemon threads (`threads.py`), queue
control applies operators' and Elixir nodes' commands (`control.py`, `signals.py`), and
the inline runner runs jobs in the caller for the testing modes (`inline.py`).
"""

from kerrera.queue.executor import Executor
from kerrera.queue.ledger import Ledger
from kerrera.queue.producer import Producer, Threads
from kerrera.queue.threads import DaemonThreadPool

__all__ = ["DaemonThreadPool", "Executor", "Ledger", "Producer", "Threads"]
