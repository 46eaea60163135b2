"""Validation of job options shared by workers and `Worker.new()`."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from kerrera.core import codec
from kerrera.core.errors import ConfigError
from kerrera.core.job import Job

_NAME_MAX = 127  # the table's queue_length / worker_length check constraints


def check_queue(queue: object, option: str = "queue") -> str:
    """Return `queue` if it is a valid queue name, else raise `ConfigError`."""
    if not isinstance(queue, str) or not queue.strip():
        raise ConfigError(f"option {option!r} must be a non-empty string, got {queue!r}")
    if len(queue) > _NAME_MAX:
        raise ConfigError(f"option {option!r} must be at most {_NAME_MAX} characters")
    return queue


def check_priority(priority: object) -> int:
    """Priorities run 0 (first) to 9 (last), as Oban accepts them."""
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
        raise ConfigError(f"option 'priority' must be an integer 0..9, got {priority!r}")
    return priority


def check_max_attempts(value: object) -> int:
    """At least one attempt; the table rejects anything else."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"option 'max_attempts' must be an integer >= 1, got {value!r}")
    return value


def check_tags(tags: object) -> list[str]:
    """Trim, lowercase and de-duplicate tags, keeping order (as Elixir Oban stores them)."""
    if isinstance(tags, str) or not isinstance(tags, list | tuple | set | frozenset):
        raise ConfigError(f"option 'tags' must be a list of strings, got {tags!r}")
    out: list[str] = []
    for tag in tags:
        if not isinstance(tag, str):
            raise ConfigError(f"option 'tags' must hold strings, got {tag!r}")
        clean = tag.strip().lower()
        if clean and clean not in out:
            out.append(clean)
    return out


def check_timeout(value: object) -> float | None:
    """A positive number of seconds, or None for no limit."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"option 'timeout' must be seconds > 0 or None, got {value!r}")
    return float(value)


def check_json_object(value: object, option: str) -> dict[str, Any]:
    """Args and meta are JSON objects with string keys that survive a round trip."""
    if isinstance(value, Mapping) and not isinstance(value, dict):
        value = dict(value)
    if not isinstance(value, dict):
        raise ConfigError(f"option {option!r} must be a dict (a JSON object), got {value!r}")
    if not value:
        return value
    try:
        codec.dumps(value)  # also rejects keys that are not strings
    except TypeError as exc:
        raise ConfigError(f"option {option!r} is not JSON-serialisable: {exc}") from None
    return value


def check_schedule(
    scheduled_at: datetime | None, schedule_in: float | None
) -> tuple[datetime | None, float | None]:
    """Normalise the two ways to schedule: an absolute time (to naive UTC) or a delay."""
    if scheduled_at is not None and schedule_in is not None:
        raise ConfigError("give either 'scheduled_at' or 'schedule_in', not both")
    if schedule_in is not None:
        ok = isinstance(schedule_in, int | float) and not isinstance(schedule_in, bool)
        if not ok or not math.isfinite(schedule_in) or schedule_in < 0:
            raise ConfigError(f"option 'schedule_in' must be seconds >= 0, got {schedule_in!r}")
        return None, float(schedule_in)
    if scheduled_at is not None:
        if not isinstance(scheduled_at, datetime):
            raise ConfigError(f"option 'scheduled_at' must be a datetime, got {scheduled_at!r}")
        if scheduled_at.tzinfo is not None:
            scheduled_at = scheduled_at.astimezone(UTC).replace(tzinfo=None)
    return scheduled_at, None


def check_jobs(jobs: Iterable[Job]) -> list[Job]:
    """Reject what the table would reject, naming the job and the option."""
    batch = list(jobs)
    for index, job in enumerate(batch):
        if not isinstance(job, Job):
            raise ConfigError(
                f"insert expects Job objects (from Worker.new), got {job!r} at position {index}"
            )
        if not job.worker or len(job.worker) > 127:
            raise ConfigError(f"job at position {index}: option 'worker' must be 1..127 characters")
        if not job.queue or len(job.queue) > 127:
            raise ConfigError(f"job at position {index}: option 'queue' must be 1..127 characters")
    return batch


_PREFIX_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def check_prefix(prefix: object) -> str:
    """A schema name is inlined into SQL, so only plain identifiers are accepted."""
    if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
        raise ConfigError(
            f"option 'prefix' must be a plain schema name (letters, digits, _), got {prefix!r}"
        )
    return prefix
