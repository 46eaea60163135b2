"""Kerrera's options: a frozen dataclass, validated at construction with clear messages."""

from __future__ import annotations

import difflib
import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from kerrera.core.cron_entries import parse_crontab
from kerrera.core.crontab import CronExpression
from kerrera.core.errors import ConfigError
from kerrera.core.modes import check_mode
from kerrera.core.options import check_prefix, check_queue

#: Longer would make a new leader insert weeks of missed ticks at once.
CRON_CATCH_UP_MAX = 7 * 86400.0
#: A lease longer than a day would leave a crashed leader's services idle that long.
LEASE_MAX = 86400.0


@dataclass(frozen=True)
class Config:
    """Validated options of a `Kerrera` instance (see `Kerrera` for their meaning)."""

    dsn: str | None = None
    queues: Mapping[str, int] = field(default_factory=dict)
    prefix: str = "public"
    node: str = ""
    migrate: bool = True
    shutdown_grace_period: float = 15.0
    poll_interval: float = 1.0
    stage_interval: float = 1.0
    heartbeat_interval: float = 10.0
    producer_ttl: float = 30.0
    rescue_interval: float = 15.0
    rescue_after: float = 3600.0
    pool_size: int = 10
    sync_threads: int | None = None
    data_dir: str = ".kerrera"
    notifier: str = "postgres"
    peer: str = "postgres"
    leader: bool = True
    leader_lease: float = 30.0
    crontab: Any = ()
    cron_catch_up: float = 300.0
    prune_max_age: Any = 7 * 86400.0
    prune_interval: float = 30.0
    prune_limit: int = 10_000
    reindex_schedule: Any = "@daily"
    progress_interval: float = 0.25
    stats_interval: float | None = 5.0
    testing: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.dsn is not None and not isinstance(self.dsn, str):
            raise ConfigError(f"option 'dsn' must be a connection string, got {self.dsn!r}")
        set_(self, "queues", _check_queues(self.queues))
        check_prefix(self.prefix)
        set_(self, "node", _check_node(self.node))
        if not isinstance(self.migrate, bool):
            raise ConfigError(f"option 'migrate' must be True or False, got {self.migrate!r}")
        for name in (
            "shutdown_grace_period",
            "poll_interval",
            "stage_interval",
            "heartbeat_interval",
            "producer_ttl",
            "rescue_interval",
            "rescue_after",
        ):
            _check_seconds(name, getattr(self, name), allow_zero=name == "shutdown_grace_period")
        if self.producer_ttl <= self.heartbeat_interval:
            raise ConfigError(
                f"option 'producer_ttl' ({self.producer_ttl}) must be longer than "
                f"'heartbeat_interval' ({self.heartbeat_interval}), or live nodes expire"
            )
        _check_count("pool_size", self.pool_size)
        if self.sync_threads is not None:
            _check_count("sync_threads", self.sync_threads)
        for seam in ("notifier", "peer"):
            kind = getattr(self, seam)
            if kind not in ("postgres", "isolated"):
                raise ConfigError(f"option {seam!r} must be 'postgres' or 'isolated', got {kind!r}")
        if not isinstance(self.data_dir, str | os.PathLike):
            raise ConfigError(f"option 'data_dir' must be a path, got {self.data_dir!r}")
        if not isinstance(self.leader, bool):
            raise ConfigError(f"option 'leader' must be True or False, got {self.leader!r}")
        check_mode(self.testing)
        for name in ("leader_lease", "cron_catch_up", "prune_interval", "progress_interval"):
            zero_ok = name in ("cron_catch_up", "progress_interval")
            _check_seconds(name, getattr(self, name), allow_zero=zero_ok)
        if self.cron_catch_up > CRON_CATCH_UP_MAX:
            raise ConfigError(
                f"option 'cron_catch_up' must be at most {CRON_CATCH_UP_MAX:.0f} "
                f"seconds (7 days), got {self.cron_catch_up!r}"
            )
        if self.leader_lease > LEASE_MAX:
            raise ConfigError(
                f"option 'leader_lease' must be at most {LEASE_MAX:.0f} seconds, "
                f"got {self.leader_lease!r}"
            )
        _check_count("prune_limit", self.prune_limit)
        if self.stats_interval is not None:
            _check_seconds("stats_interval", self.stats_interval, allow_zero=False)
        set_(self, "prune_max_age", _check_max_age(self.prune_max_age))
        set_(self, "crontab", parse_crontab(self.crontab))
        if self.reindex_schedule is not None and not isinstance(
            self.reindex_schedule, CronExpression
        ):
            if not isinstance(self.reindex_schedule, str):
                raise ConfigError(
                    "option 'reindex_schedule' must be a cron expression or "
                    f"None, got {self.reindex_schedule!r}"
                )
            set_(self, "reindex_schedule", CronExpression.parse(self.reindex_schedule))

    @classmethod
    def unknown(cls, given: Mapping[str, Any]) -> ConfigError:
        """The error for options that do not exist, suggesting the closest real one."""
        names = [f.name for f in fields(cls)]
        parts = []
        for key in given:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f", did you mean {close[0]!r}?" if close else ""
            parts.append(f"unknown option {key!r}{hint}")
        return ConfigError("; ".join(parts))

    @property
    def threads(self) -> int:
        """Threads for sync workers: as many as the queues can run at once, capped."""
        if self.sync_threads is not None:
            return self.sync_threads
        return max(1, min(64, sum(self.queues.values()) or 1))


def _check_queues(queues: object) -> dict[str, int]:
    if queues is None:
        return {}
    if not isinstance(queues, Mapping):
        raise ConfigError(f"option 'queues' must be a dict of queue name to limit, got {queues!r}")
    out: dict[str, int] = {}
    for name, limit in queues.items():
        check_queue(name, "queues")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(
                f"option 'queues': limit of queue {name!r} must be an integer >= 1, got {limit!r}"
            )
        out[name] = limit
    return out


_PRUNED_STATES = ("completed", "cancelled", "discarded")


def _check_max_age(value: object) -> dict[str, float | None]:
    """One age for every finished state, a dict per state (missing states are kept), or
    None to keep everything."""
    if value is None:
        return dict.fromkeys(_PRUNED_STATES)
    if isinstance(value, Mapping):
        wrong = [k for k in value if k not in _PRUNED_STATES]
        if wrong:
            raise ConfigError(
                f"option 'prune_max_age': unknown state {wrong[0]!r} (use "
                f"{', '.join(_PRUNED_STATES)})"
            )
        out: dict[str, float | None] = dict.fromkeys(_PRUNED_STATES)
        for state, age in value.items():
            if age is not None:
                _check_seconds(f"prune_max_age[{state!r}]", age, allow_zero=False)
                out[state] = float(age)
        return out
    _check_seconds("prune_max_age", value, allow_zero=False)
    return dict.fromkeys(_PRUNED_STATES, float(value))  # type: ignore[arg-type]


def _check_node(node: object) -> str:
    if node is None or node == "":
        return f"{socket.gethostname()}-{os.getpid()}"
    if not isinstance(node, str) or len(node) > 255:
        raise ConfigError(f"option 'node' must be a string of at most 255 characters, got {node!r}")
    return node


def _check_seconds(name: str, value: object, *, allow_zero: bool) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):  # type: ignore[operator]
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"option {name!r} must be seconds {bound}, got {value!r}")


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"option {name!r} must be an integer >= 1, got {value!r}")
