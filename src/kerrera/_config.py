"""Kerrera's options: a frozen dataclass, validated at construction with clear messages."""

from __future__ import annotations

import difflib
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from kerrera._errors import ConfigError
from kerrera._options import check_queue
from kerrera.engine.statements import check_prefix


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

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.dsn is not None and not isinstance(self.dsn, str):
            raise ConfigError(f"option 'dsn' must be a connection string, got {self.dsn!r}")
        set_(self, "queues", _check_queues(self.queues))
        check_prefix(self.prefix)
        set_(self, "node", _check_node(self.node))
        if not isinstance(self.migrate, bool):
            raise ConfigError(f"option 'migrate' must be True or False, got {self.migrate!r}")
        for name in ("shutdown_grace_period", "poll_interval", "stage_interval",
                     "heartbeat_interval", "producer_ttl", "rescue_interval", "rescue_after"):
            _check_seconds(name, getattr(self, name), allow_zero=name == "shutdown_grace_period")
        if self.producer_ttl <= self.heartbeat_interval:
            raise ConfigError(
                f"option 'producer_ttl' ({self.producer_ttl}) must be longer than "
                f"'heartbeat_interval' ({self.heartbeat_interval}), or live nodes expire"
            )
        _check_count("pool_size", self.pool_size)
        if self.sync_threads is not None:
            _check_count("sync_threads", self.sync_threads)
        if self.notifier not in ("postgres", "isolated"):
            raise ConfigError(
                f"option 'notifier' must be 'postgres' or 'isolated', got {self.notifier!r}"
            )
        if not isinstance(self.data_dir, str | os.PathLike):
            raise ConfigError(f"option 'data_dir' must be a path, got {self.data_dir!r}")

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


def _check_node(node: object) -> str:
    if node is None or node == "":
        return f"{socket.gethostname()}-{os.getpid()}"
    if not isinstance(node, str) or len(node) > 255:
        raise ConfigError(f"option 'node' must be a string of at most 255 characters, got {node!r}")
    return node


def _check_seconds(name: str, value: object, *, allow_zero: bool) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or value < 0 or (value == 0 and not allow_zero):  # type: ignore[operator]
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"option {name!r} must be seconds {bound}, got {value!r}")


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"option {name!r} must be an integer >= 1, got {value!r}")
