"""Crontab entries: `crontab=[(expression, worker, options), ...]`, validated up front.

Each entry has a stable name (given, or derived from worker, expression and args), and
builds one job per tick whose `meta` names the entry and the tick. The job is also unique
on (entry, tick) in every state, a second guard behind the cron table's row lock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from kerrera.core.crontab import CronExpression, load_zone
from kerrera.core.errors import ConfigError, UnknownWorkerError
from kerrera.core.job import Job
from kerrera.core.unique import ALL_STATES, Unique
from kerrera.core.worker import Worker, resolve_worker

_JOB_OPTIONS = ("args", "queue", "priority", "max_attempts", "tags", "meta")
_OPTIONS = (*_JOB_OPTIONS, "timezone", "name")
_TICK_UNIQUE = Unique(
    period=None, fields=("worker", "meta"), keys=("cron_name", "cron_tick"), states=ALL_STATES
)


@dataclass(frozen=True)
class CronEntry:
    """One validated crontab line."""

    name: str
    expression: CronExpression
    worker: Worker
    zone: tzinfo
    options: dict[str, Any] = field(default_factory=dict)

    def build(self, local_tick: datetime | None) -> Job:
        """The job for one tick (`local_tick` in the entry's zone; None for @reboot)."""
        opts = dict(self.options)
        meta = {
            **opts.pop("meta", {}),
            "cron": True,
            "cron_name": self.name,
            "cron_expr": self.expression.text,
        }
        if isinstance(self.zone, ZoneInfo):
            meta["cron_tz"] = self.zone.key
        unique: Unique | bool = False
        if local_tick is not None:
            meta["cron_tick"] = local_tick.strftime("%Y-%m-%dT%H:%M")
            unique = _TICK_UNIQUE
        job: Job = self.worker.new(opts.pop("args", None), meta=meta, unique=unique, **opts)
        return job


def parse_crontab(entries: object) -> tuple[CronEntry, ...]:
    """Validate `crontab`; every problem is a `ConfigError` naming the entry."""
    if entries is None:
        return ()
    if isinstance(entries, str | bytes) or not isinstance(entries, Iterable):
        raise ConfigError(
            f"option 'crontab' must be a list of (expression, worker, options) "
            f"tuples, got {entries!r}"
        )
    out: list[CronEntry] = []
    for index, entry in enumerate(entries):
        out.append(_entry(index, entry))
    names = [e.name for e in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(
            f"option 'crontab': entries share the name {twice[0]!r}; give each "
            "a distinct 'name' option"
        )
    return tuple(out)


def _entry(index: int, entry: object) -> CronEntry:
    where = f"option 'crontab' entry {index}"
    if not isinstance(entry, tuple | list) or len(entry) not in (2, 3):
        raise ConfigError(
            f"{where} must be (expression, worker) or (expression, worker, options), got {entry!r}"
        )
    text, target = entry[0], entry[1]
    opts = entry[2] if len(entry) == 3 else {}
    if not isinstance(text, str):
        raise ConfigError(f"{where}: the expression must be a string, got {text!r}")
    expression = CronExpression.parse(text)
    if not isinstance(opts, Mapping):
        raise ConfigError(f"{where}: options must be a dict, got {opts!r}")
    unknown = sorted(set(opts) - set(_OPTIONS))
    if unknown:
        raise ConfigError(f"{where}: unknown option {unknown[0]!r} (use {', '.join(_OPTIONS)})")
    worker = _worker(where, target)
    zone = load_zone(opts.get("timezone") or "Etc/UTC")
    job_opts = {k: v for k, v in opts.items() if k in _JOB_OPTIONS}
    try:
        worker.new(job_opts.get("args"), **{k: v for k, v in job_opts.items() if k != "args"})
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    name = opts.get("name") or _default_name(worker, text, job_opts)
    if not isinstance(name, str):
        raise ConfigError(f"{where}: option 'name' must be a string, got {name!r}")
    return CronEntry(name, expression, worker, zone, job_opts)


def _worker(where: str, target: object) -> Worker:
    if isinstance(target, str):
        try:
            return resolve_worker(target)
        except UnknownWorkerError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if isinstance(target, Worker):
        return target
    if isinstance(target, type) and issubclass(target, Worker):
        return resolve_worker(target.name)
    raise ConfigError(
        f"{where}: the worker must be a Worker, a @worker function or a "
        f"worker's name, got {target!r}"
    )


def _default_name(worker: Worker, text: str, opts: dict[str, Any]) -> str:
    # Stable across restarts and nodes: the same line gets the same name everywhere.
    name = f"{worker.name} {text.strip()}"
    if opts.get("args"):
        digest = hashlib.sha256(orjson.dumps(opts["args"], option=orjson.OPT_SORT_KEYS))
        name += f" {digest.hexdigest()[:8]}"
    return name
