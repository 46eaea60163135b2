"""Which database errors are worth retrying, decided in one place."""

from __future__ import annotations

import psycopg

#: serialization_failure, deadlock_detected, lock_not_available: retry at once.
_RETRY_QUICKLY = frozenset({"40001", "40P01", "55P03"})


def is_transient(exc: BaseException) -> bool:
    """True for errors that a retry can cure: lost connections and lock conflicts."""
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return True
    if isinstance(exc, OSError):
        return True
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate in _RETRY_QUICKLY:
        return True
    # admin_shutdown / crash_shutdown / cannot_connect_now (class 57P) and
    # connection exceptions (class 08): the server went away under us.
    return isinstance(sqlstate, str) and (sqlstate.startswith("57P") or sqlstate.startswith("08"))


def is_quick_retry(exc: BaseException) -> bool:
    """Lock conflicts clear up in milliseconds; no need to back off for long."""
    return getattr(exc, "sqlstate", None) in _RETRY_QUICKLY
