"""Exceptions that Kerrera raises to its callers."""

from __future__ import annotations


class KerreraError(Exception):
    """Base class of Kerrera's own errors."""


class ConfigError(KerreraError, ValueError):
    """An option given to Kerrera or to a worker is invalid; the message names it."""


class SchemaError(KerreraError):
    """The database schema is missing or out of date and migration is not allowed."""


class UnknownWorkerError(KerreraError):
    """A job names a worker that cannot be imported here."""


class JobTimeoutError(KerreraError, TimeoutError):
    """A job ran longer than its worker's timeout."""
