"""Kerrera options from Django settings: the `KERRERA` dict and the database it uses.

`settings.KERRERA` holds any `Kerrera` option plus two of this integration's own:
`database` (the `DATABASES` alias whose connection jobs are inserted on, "default") and
`modules` (worker modules that `manage.py kerrera start` imports). Without a `dsn`
option, the DSN is built from that database's settings, read when it is asked for, so
that Django's test runner (which renames the database to `test_<NAME>`) is followed.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from kerrera import ConfigError, Kerrera
from kerrera.contrib.django._django import (
    ConnectionDoesNotExist,
    ImproperlyConfigured,
    connections,
    settings,
)

#: This integration's own keys of `settings.KERRERA`; every other key is a Kerrera option.
DJANGO_KEYS = ("database", "modules")

# Django setting -> libpq keyword; OPTIONS add whatever libpq itself understands.
_FIELDS = (("NAME", "dbname"), ("USER", "user"), ("PASSWORD", "password"),
           ("HOST", "host"), ("PORT", "port"))  # fmt: skip


@dataclass(frozen=True)
class KerreraSettings:
    """`settings.KERRERA`, checked: the database alias, worker modules and the options
    passed to `Kerrera` (a `dsn` among them only when given explicitly).

    Example:
        conf = KerreraSettings.load()   # KERRERA = {"queues": {"default": 5}}
        conf.options                    # {"queues": {"default": 5}}
    """

    database: str = "default"
    modules: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls) -> KerreraSettings:
        """Read and check `settings.KERRERA` (absent means every default)."""
        raw = getattr(settings, "KERRERA", None)
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise ImproperlyConfigured(
                f"settings.KERRERA must be a dict of Kerrera options, got {raw!r}"
            )
        unknown = [key for key in raw if key not in DJANGO_KEYS and key not in _option_names()]
        if unknown:
            raise ConfigError(f"settings.KERRERA: {_unknown_message(unknown)}")
        options = {k: v for k, v in raw.items() if k not in DJANGO_KEYS}
        return cls(
            _alias(raw.get("database", "default")), _modules(raw.get("modules", ())), options
        )

    def dsn(self) -> str:
        """The explicit `dsn` option, else one built from the Django database."""
        given = self.options.get("dsn")
        return given if isinstance(given, str) and given else database_dsn(self.database)


def build_app(**overrides: Any) -> Kerrera:
    """A new `Kerrera` built from settings, `overrides` winning over `settings.KERRERA`.

    An invalid option is a `ConfigError` that names it (and, for a misspelt one,
    suggests the closest real name). Use `get_app()` for the process's shared instance;
    this is for a node of your own, e.g. in a test.

    Example:
        async with build_app(queues={"default": 2}) as node:
            ...  # runs the default queue until the block exits
    """
    conf = KerreraSettings.load()
    unknown = [key for key in overrides if key not in _option_names()]
    if unknown:
        raise ConfigError(_unknown_message(unknown))
    options = {**conf.options, **overrides}
    options["dsn"] = options.get("dsn") or conf.dsn()
    try:
        return Kerrera(**options)
    except ConfigError as exc:
        raise ConfigError(f"settings.KERRERA: {exc}") from exc


def database_dsn(alias: str = "default") -> str:
    """A libpq connection string for the Django database `alias` (PostgreSQL only).

    NAME, USER, PASSWORD, HOST and PORT become `dbname`, `user`, ...; OPTIONS entries
    that libpq understands (`sslmode`, `options`, `service`, ...) are kept, Django's own
    (`pool`, `isolation_level`, `server_side_binding`, `assume_role`) are not.

    Example:
        database_dsn()   # "dbname=shop user=web host=db.internal port=5432"
    """
    try:
        wrapper = connections[alias]
    except ConnectionDoesNotExist:
        raise ImproperlyConfigured(
            f"settings.KERRERA['database'] is {alias!r}, which is not in settings.DATABASES"
        ) from None
    engine = wrapper.settings_dict.get("ENGINE", "")
    if wrapper.vendor != "postgresql":
        raise ImproperlyConfigured(
            f"settings.DATABASES[{alias!r}] uses ENGINE {engine!r}, but Kerrera needs "
            "PostgreSQL ('django.db.backends.postgresql'); point settings.KERRERA['database'] "
            "at a PostgreSQL database or give settings.KERRERA['dsn']"
        )
    given = wrapper.settings_dict
    params: dict[str, Any] = {
        key: value
        for key, value in (given.get("OPTIONS") or {}).items()
        if key in _libpq_keywords() and isinstance(value, str | int) and value != ""
    }
    for setting, keyword in _FIELDS:
        if given.get(setting):
            params[keyword] = str(given[setting])
    return make_conninfo(**params)


@functools.cache
def _option_names() -> frozenset[str]:
    """The options `Kerrera(...)` accepts (read from its signature, so never stale)."""
    parameters = inspect.signature(Kerrera).parameters.values()
    return frozenset(p.name for p in parameters if p.kind is not p.VAR_KEYWORD)


@functools.cache
def _libpq_keywords() -> frozenset[str]:
    return frozenset(opt.keyword.decode() for opt in psycopg.pq.Conninfo.get_defaults())


def _unknown_message(keys: Sequence[str]) -> str:
    names = sorted({*_option_names(), *DJANGO_KEYS})
    parts = []
    for key in keys:
        close = difflib.get_close_matches(str(key), names, n=1)
        hint = f", did you mean {close[0]!r}?" if close else ""
        parts.append(f"unknown option {key!r}{hint}")
    return "; ".join(parts)


def _alias(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(
            f"settings.KERRERA: option 'database' must be a DATABASES alias, got {value!r}"
        )
    return value


def _modules(value: object) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(
            f"settings.KERRERA: option 'modules' must be a list of module names, got {value!r}"
        )
    return tuple(names)
