"""Services: background loops that keep the jobs table moving.

Leader-only: the stager (due scheduled/retryable jobs become available), the pruner,
cron and the reindexer; on every node: the lifeline (heartbeats, orphan rescue) and
leadership itself. Each loop logs, backs off and goes on after a database error
(`every.py`).
"""

from kerrera.services.cron import Cron
from kerrera.services.leader import Leadership
from kerrera.services.lifeline import Lifeline
from kerrera.services.pruner import Pruner
from kerrera.services.reindexer import Reindexer
from kerrera.services.stager import Stager

__all__ = ["Cron", "Leadership", "Lifeline", "Pruner", "Reindexer", "Stager"]
