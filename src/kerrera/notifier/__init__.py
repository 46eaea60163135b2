"""The notification seam: LISTEN/NOTIFY, or in-process for tests."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kerrera.notifier.base import Hold, Listener, Message, Notifier, StatusListener
from kerrera.notifier.isolated import IsolatedNotifier
from kerrera.notifier.postgres import PostgresNotifier

if TYPE_CHECKING:
    from kerrera.engine.postgres import PostgresEngine

__all__ = [
    "Hold",
    "IsolatedNotifier",
    "Listener",
    "Message",
    "Notifier",
    "PostgresNotifier",
    "StatusListener",
    "is_transactional",
    "make_notifier",
]


def make_notifier(kind: str, engine: PostgresEngine) -> Notifier:
    """The notifier named by the `notifier` option ("postgres" or "isolated")."""
    return PostgresNotifier(engine) if kind == "postgres" else IsolatedNotifier()


def is_transactional(kind: str) -> bool:
    """Whether the notifier named `kind` hears the engine statements' own `pg_notify`
    (known before one is made: the sync engine needs it first)."""
    return (PostgresNotifier if kind == "postgres" else IsolatedNotifier).transactional
