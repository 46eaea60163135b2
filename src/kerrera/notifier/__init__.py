"""The notification seam: LISTEN/NOTIFY, or in-process for tests."""

from kerrera.notifier.base import Listener, Notifier, StatusListener
from kerrera.notifier.isolated import IsolatedNotifier
from kerrera.notifier.postgres import PostgresNotifier

__all__ = ["IsolatedNotifier", "Listener", "Notifier", "PostgresNotifier", "StatusListener"]
