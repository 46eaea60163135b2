"""Background services that keep the jobs table moving."""

from kerrera.services.lifeline import Lifeline
from kerrera.services.stager import Stager

__all__ = ["Lifeline", "Stager"]
