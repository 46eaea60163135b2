"""The event bus: handlers attach to named events and are called synchronously.

A handler is `fn(event, measurements, metadata)`. It runs where the event happens (a job's
task, a service's loop, the caller of `insert`), so it must be quick; a handler that
raises is detached and logged, and never disturbs the code that emitted the event.

`active(event)` is a dictionary lookup, so emitting code can skip building the two dicts
when nobody listens: with no handler attached, telemetry costs the hot path nothing.
"""

from __future__ import annotations

import difflib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from kerrera.core.errors import ConfigError

log = logging.getLogger("kerrera.telemetry")

#: `fn(event_name, measurements, metadata)`.
Handler = Callable[[str, dict[str, Any], dict[str, Any]], None]

#: Every event Kerrera emits, with what its measurements hold (docs/telemetry.md has the
#: metadata of each).
EVENTS: Mapping[str, str] = {
    "job.start": "system_time, queue_time",
    "job.stop": "duration, queue_time (state: completed/snoozed/cancelled/retryable/"
    "discarded/released)",
    "job.exception": "duration, queue_time (state: retryable/discarded)",
    "job.progress": "percent",
    "chunk.start": "system_time, size, wait (a chunk worker's chunk; its jobs emit job.*)",
    "chunk.stop": "duration, size, wait (metadata states: count of each outcome)",
    "insert.start": "count (handlers may add to each job's meta)",
    "insert": "count, conflicts, duration",
    "producer.fetch": "count, demand, duration",
    "producer.ack": "count, duration",
    "producer.restart": "restarts, delay (metadata error: the exception)",
    "stager": "count, duration",
    "pruner": "count, duration",
    "lifeline": "rescued, expired, duration",
    "cron": "count, duration",
    "reindexer": "count, duration",
    "leader.election": "duration",
    "notifier.switch": "(metadata up: bool)",
    "queue.shutdown": "running, duration",
}
# First segments that belong to Kerrera: attaching to an unknown name under one of them is
# a typo (reported), while any other name is an application's own event.
_OURS = frozenset(name.split(".")[0] for name in EVENTS)

_lock = threading.Lock()
_attached: dict[str, tuple[tuple[str, ...], Handler]] = {}
# Event name -> its handlers, built on first use under the lock and emptied on attach and
# detach; emitting reads it without the lock (a stale read sees a handler just detached
# once more, never a half-built route).
_routes: dict[str, tuple[tuple[str, Handler], ...]] = {}
# A group of events -> whether any of them has a handler (see `any_active`).
_groups: dict[tuple[str, ...], bool] = {}
#: The events of a job's run. Whether any has a handler is kept in `jobs_watched`, a
#: plain module attribute, because the executor asks for every job.
JOB_EVENTS = ("job.start", "job.exception", "job.stop")
jobs_watched = False


def _changed() -> None:
    """After attach/detach (under the lock): forget cached routes, recompute the flag."""
    global jobs_watched
    _routes.clear()
    _groups.clear()
    jobs_watched = _any_match(JOB_EVENTS)


def attach(handler_id: str, events: str | Iterable[str], fn: Handler) -> None:
    """Call `fn(event, measurements, metadata)` for each of `events`.

    `events` holds names from `EVENTS`, patterns ending in `*` (`"job.*"`, or `"*"` for
    everything) or an application's own names. `handler_id` must not be attached yet.

    Example:
        def on_stop(event, measurements, metadata):
            print(metadata["worker"], metadata["state"], measurements["duration"])

        telemetry.attach("print-jobs", ["job.stop"], on_stop)
    """
    if not isinstance(handler_id, str) or not handler_id:
        raise ConfigError(f"telemetry handler_id must be a non-empty string, got {handler_id!r}")
    if not callable(fn):
        raise ConfigError(f"telemetry handler {handler_id!r} is not callable: {fn!r}")
    names = (events,) if isinstance(events, str) else tuple(events)
    if not names:
        raise ConfigError(f"telemetry handler {handler_id!r}: no events given")
    for name in names:
        _check_name(name)
    with _lock:
        if handler_id in _attached:
            raise ConfigError(f"telemetry handler {handler_id!r} is already attached")
        _attached[handler_id] = (names, fn)
        _changed()


def detach(handler_id: str) -> bool:
    """Stop calling the handler attached as `handler_id`; False if there was none."""
    with _lock:
        found = _attached.pop(handler_id, None) is not None
        if found:
            _changed()
    return found


def handlers() -> list[str]:
    """The ids of the handlers attached now."""
    with _lock:
        return sorted(_attached)


def active(event: str) -> bool:
    """Whether any handler listens to `event` (so emitting code can skip the work)."""
    route = _routes.get(event)
    if route is None:
        route = _route(event)
    return bool(route)


def any_active(events: tuple[str, ...]) -> bool:
    """Whether any of `events` has a handler (one lookup for the whole group)."""
    found = _groups.get(events)
    if found is None:
        with _lock:  # (an attach between computing and storing must not be forgotten)
            found = _groups[events] = _any_match(events)
    return found


def execute(event: str, measurements: dict[str, Any], metadata: dict[str, Any]) -> None:
    """Call every handler of `event`. A handler that raises is detached and logged.

    Applications may emit their own events too: `execute("app.export", {"rows": n}, {})`.
    """
    route = _routes.get(event)
    if route is None:
        route = _route(event)
    for handler_id, fn in route:
        try:
            fn(event, measurements, metadata)
        except Exception:
            detach(handler_id)
            log.exception("telemetry handler %r failed on %s and was detached", handler_id, event)


@contextmanager
def timed(event: str, metadata: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Emit `event` when the block ends, with its `duration` in seconds.

    The block may add measurements to the dict it is given. If it raises, the event is
    emitted with the exception as `metadata["error"]` (a cancellation emits nothing);
    otherwise `metadata["error"]` is None.
    """
    measurements: dict[str, Any] = {}
    if not active(event):
        yield measurements
        return
    started = time.perf_counter()
    try:
        yield measurements
    except Exception as exc:
        measurements["duration"] = time.perf_counter() - started
        execute(event, measurements, {**metadata, "error": exc})
        raise
    measurements["duration"] = time.perf_counter() - started
    execute(event, measurements, {**metadata, "error": None})


def _route(event: str) -> tuple[tuple[str, Handler], ...]:
    with _lock:
        route = tuple(
            (handler_id, fn)
            for handler_id, (names, fn) in _attached.items()
            if any(_matches(name, event) for name in names)
        )
        _routes[event] = route
    return route


def _any_match(events: tuple[str, ...]) -> bool:
    """Whether an attached handler listens to any of `events` (call under the lock)."""
    return any(
        _matches(name, event) for names, _fn in _attached.values()
        for name in names for event in events
    )  # fmt: skip


def _matches(name: str, event: str) -> bool:
    if name.endswith("*"):
        return event.startswith(name[:-1])
    return name == event


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"telemetry event names must be non-empty strings, got {name!r}")
    if name.endswith("*"):
        if "*" in name[:-1]:
            raise ConfigError(f"telemetry event pattern {name!r}: only a trailing * is allowed")
        return
    if name in EVENTS or name.split(".")[0] not in _OURS:
        return
    close = difflib.get_close_matches(name, list(EVENTS), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"unknown telemetry event {name!r}{hint}")
