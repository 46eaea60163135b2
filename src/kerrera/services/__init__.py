"""Background services that keep the jobs table moving."""

from kerrera.services.cron import Cron
from kerrera.services.leader import Leadership
from kerrera.services.lifeline import Lifeline
from kerrera.services.pruner import Pruner
from kerrera.services.reindexer import Reindexer
from kerrera.services.stager import Stager

__all__ = ["Cron", "Leadership", "Lifeline", "Pruner", "Reindexer", "Stager"]
