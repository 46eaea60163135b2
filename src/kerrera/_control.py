"""Queue control across the cluster: persisted operator commands, Oban-format signals.

An operator's `pause_queue` / `resume_queue` / `scale_queue` / `start_queue` /
`stop_queue` is written to `kerrera_queues` (for every node, or for one) and signalled
in the same transaction. Every node that hears a signal meant for it re-reads the table
and reconciles its producers with it, so the table is the single truth: a node that
starts later, or that missed signals while its notifier was down, converges on it too.
Signals from Elixir nodes (not persisted) are applied as they come.

Effective state of a queue on a node, field by field: the node's own row, else the
row for every node, else this node's configuration.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kerrera import _json
from kerrera._errors import ConfigError
from kerrera._options import check_queue
from kerrera.engine.base import Engine
from kerrera.queue import Producer

log = logging.getLogger("kerrera.control")

#: The instance name in signal idents that address Kerrera nodes only ("Kerrera.any").
IDENT_NAME = "Kerrera"


@dataclass(frozen=True, slots=True)
class QueueState:
    """What one queue should be on this node."""

    running: bool
    limit: int
    paused: bool


def signal_payload(action: str, queue: str, node: str | None, limit: int | None = None) -> str:
    """An Oban `signal` payload. Pause, resume, scale and stop go to every instance
    ("any", Elixir's too: the queue is one queue in the shared table); start goes to
    Kerrera nodes only, because an Elixir node cannot run Python workers."""
    if node is not None:
        ident = f"{IDENT_NAME}.{node}"
    else:
        ident = f"{IDENT_NAME}.any" if action == "start" else "any"
    message: dict[str, Any] = {"action": action, "ident": ident, "queue": queue,
                               "kerrera": True}
    if limit is not None:
        message["limit"] = limit
    return _json.dumps(message)


def queue_command(
    action: str, queue: str, node: str | None, limit: int | None = None
) -> tuple[dict[str, Any], str]:
    """Validate an operator's command; return the fields it persists and its signal."""
    check_queue(queue)
    if node is not None and (not isinstance(node, str) or not node):
        raise ConfigError(f"option 'node' must be a node name or None, got {node!r}")
    if action in ("scale", "start") and (
        isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
    ):
        raise ConfigError(f"option 'limit' must be an integer >= 1, got {limit!r}")
    persisted: dict[str, dict[str, Any]] = {
        "pause": {"paused": True}, "resume": {"paused": False}, "scale": {"limit": limit},
        "start": {"running": True, "limit": limit}, "stop": {"running": False},
    }  # fmt: skip
    return persisted[action], signal_payload(action, queue, node, limit)


def addressed_to(ident: object, node: str) -> bool:
    """Whether a signal's ident names this node: "any", "Kerrera.any", or
    "<instance>.<node>" for any instance name (an Elixir operator's "Oban.<node>")."""
    if ident in (None, "any", f"{IDENT_NAME}.any"):
        return True
    return isinstance(ident, str) and (ident == node or ident.endswith("." + node))


def effective(
    configured: Mapping[str, int], rows: list[tuple[str, str, Any, Any, Any]]
) -> dict[str, QueueState]:
    """Merge persisted commands over the configuration (node row > all-nodes row)."""
    merged: dict[str, dict[str, Any]] = {}
    for queue, _node, paused, limit, running in sorted(rows, key=lambda r: r[1] != ""):
        slot = merged.setdefault(queue, {})
        for key, value in (("paused", paused), ("limit", limit), ("running", running)):
            if value is not None:
                slot[key] = value  # node rows sort after '' and so win
    out: dict[str, QueueState] = {}
    for queue in {*configured, *merged}:
        slot = merged.get(queue, {})
        limit = slot.get("limit", configured.get(queue))
        running = slot.get("running", queue in configured)
        if running and limit is not None:
            out[queue] = QueueState(True, int(limit), bool(slot.get("paused", False)))
    return out


class QueueControl:
    """Keeps this node's producers in line with the persisted queue state."""

    def __init__(
        self, engine: Engine, node: str, configured: Mapping[str, int],
        producers: dict[str, Producer], make_producer: Callable[[str, int, bool], Producer],
        on_changed: Callable[[], Any], grace: float,
    ) -> None:  # fmt: skip
        self._engine = engine
        self.node = node
        self.configured = dict(configured)
        self.producers = producers
        self._make_producer = make_producer
        self._on_changed = on_changed
        self.grace = grace
        self._lock = asyncio.Lock()
        self._dirty = False
        self._stopping: set[asyncio.Task[Any]] = set()

    async def refresh(self) -> None:
        """Read the table and reconcile; calls that arrive meanwhile run once more after."""
        self._dirty = True
        if self._lock.locked():
            return  # the running refresh will see the flag and go round again
        async with self._lock:
            while self._dirty:
                self._dirty = False
                rows = await self._engine.queue_states(self.node)
                new = self.apply(effective(self.configured, rows))
                # Heartbeat before a new producer fetches anything, so the lifeline
                # knows it from its first job.
                await self._notify_changed()
                for producer in new:
                    producer.start()

    def refresh_soon(self) -> None:
        """`refresh` from a callback (a notification): errors are logged, not raised."""
        self._track(asyncio.create_task(self._refresh_logged()))

    async def _refresh_logged(self) -> None:
        try:
            await self.refresh()
        except Exception as exc:  # the notifier's reconnect triggers another refresh
            log.warning("could not read queue state (%s)", exc)

    def apply(self, wanted: Mapping[str, QueueState]) -> list[Producer]:
        """Stop, scale, pause and resume producers to match `wanted`; return the new
        producers it created, for the caller to start."""
        new = []
        for queue, state in wanted.items():
            producer = self.producers.get(queue)
            if producer is None:
                producer = self._make_producer(queue, state.limit, state.paused)
                self.producers[queue] = producer
                new.append(producer)
                log.info("queue %s on %s: limit %d%s", queue, self.node, state.limit,
                         " (paused)" if state.paused else "")
                continue
            if producer.limit != state.limit:
                producer.scale(state.limit)
            if producer.paused != state.paused:
                producer.pause() if state.paused else producer.resume()
        for queue in [q for q in self.producers if q not in wanted]:
            self.stop_producer(queue)
        return new

    def stop_producer(self, queue: str) -> None:
        """Stop one queue in the background: running jobs get the grace period."""
        producer = self.producers.pop(queue)
        self._track(asyncio.create_task(self._stop(producer)))
        log.info("queue %s stopping on %s", queue, self.node)

    async def _stop(self, producer: Producer) -> None:
        await producer.stop(self.grace)
        try:
            await self._engine.forget_producers([producer.uuid])
        except Exception as exc:  # the row expires on its own
            log.warning("could not remove producer row (%s)", exc)
        await self._notify_changed()

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    def apply_signal(self, message: Mapping[str, Any]) -> bool:
        """Apply an Elixir node's (unpersisted) signal directly; True if it changed a
        local producer. Kerrera's own signals are handled by `refresh` instead."""
        action, queue = message.get("action"), message.get("queue")
        targets = [p for q, p in self.producers.items() if queue in ("*", q)]
        if action == "pause":
            for p in targets:
                p.pause()
        elif action == "resume":
            for p in targets:
                p.resume()
        elif action == "scale" and type(message.get("limit")) is int and message["limit"] > 0:
            for p in targets:
                p.scale(message["limit"])
        elif action == "stop":
            for p in targets:
                self.stop_producer(p.queue)
        else:
            return False
        return bool(targets)

    async def _notify_changed(self) -> None:
        result = self._on_changed()
        if asyncio.iscoroutine(result):
            await result

    async def wait_stopped(self) -> None:
        """Wait for queues being stopped (used when the node itself stops)."""
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)
