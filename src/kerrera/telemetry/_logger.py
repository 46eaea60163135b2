"""The default structured logger: one JSON object per line for each event."""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from kerrera.core import codec
from kerrera.core.errors import ConfigError
from kerrera.telemetry.bus import attach

#: The handler id `attach_default_logger` uses (detach it with `detach(DEFAULT_LOGGER)`).
DEFAULT_LOGGER = "kerrera.default_logger"
#: Events logged when `events` is not given: what happened to each job, and the services.
DEFAULT_EVENTS = (
    "job.stop",
    "job.exception",
    "stager",
    "pruner",
    "lifeline",
    "cron",
    "reindexer",
    "leader.election",
    "notifier.switch",
    "queue.shutdown",
)
# Service runs that found nothing to do are logged at DEBUG: the stager runs every second,
# and a line per idle run would bury the lines that matter.
_QUIET = {
    "stager": ("count",),
    "pruner": ("count",),
    "cron": ("count",),
    "reindexer": ("count",),
    "lifeline": ("rescued", "expired"),
    "leader.election": (),  # periodic; a change of leader is logged by `kerrera.leader`
}
# Metadata copied as they are when present (the job itself is flattened below).
_PLAIN = ("queue", "node", "state", "kind", "up", "leader", "count", "released")


def attach_default_logger(
    level: int | str = logging.INFO,
    events: Iterable[str] | None = None,
    *,
    logger: logging.Logger | None = None,
) -> None:
    """Log each event as one JSON object per line on the `kerrera.events` logger.

    A job event carries `id`, `worker`, `queue`, `attempt`, `state`, `duration` and
    `queue_time` (seconds); `job.exception` adds `error` and the last traceback line.
    `level` is a logging level (name or number); `events` defaults to job outcomes and
    service runs. Failures are logged at WARNING at least, whatever `level` says; a
    service run that found nothing to do (a stager with nothing due, a periodic
    election) at DEBUG.

    Example:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        telemetry.attach_default_logger()
    """
    number = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(number, int):
        raise ConfigError(f"attach_default_logger: unknown level {level!r}")
    out = logger or logging.getLogger("kerrera.events")
    names = tuple(DEFAULT_EVENTS if events is None else events)

    def handle(event: str, measurements: dict[str, Any], metadata: dict[str, Any]) -> None:
        failed = event == "job.exception" or metadata.get("error") is not None
        if failed:
            at = max(number, logging.WARNING)
        elif event in _QUIET and not any(measurements.get(key) for key in _QUIET[event]):
            at = logging.DEBUG
        else:
            at = number
        if out.isEnabledFor(at):
            out.log(at, "%s", format_event(event, measurements, metadata))

    attach(DEFAULT_LOGGER, names, handle)


def format_event(event: str, measurements: dict[str, Any], metadata: dict[str, Any]) -> str:
    """The JSON line the default logger writes for one event."""
    line: dict[str, Any] = {
        "at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "event": event,
    }
    job = metadata.get("job")
    if job is not None:
        line.update(id=job.id, worker=job.worker, queue=job.queue, attempt=job.attempt)
    for key in _PLAIN:
        if key in metadata and _simple(metadata[key]):
            line[key] = metadata[key]
    for key, value in measurements.items():
        if isinstance(value, float):
            line[key] = round(value, 6) if math.isfinite(value) else None
        elif _simple(value):
            line[key] = value
    error = metadata.get("exception") or metadata.get("error")
    if isinstance(error, BaseException):
        line["error"] = f"{type(error).__name__}: {error}"
        frames = traceback.extract_tb(error.__traceback__)
        if frames:
            last = frames[-1]
            line["where"] = f"{last.filename}:{last.lineno} in {last.name}"
    return codec.dumps(line)


def _simple(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)
