"""Queue control across the cluster: persisted operator commands, Oban's signals.

An operator's `pause_queue` / `resume_queue` / `scale_queue` / `start_queue` /
`stop_queue` is written to `kerrera_queues` (for every node, or for one) and announced
in the same transaction, twice: on Kerrera's control channel, then as Oban's own
`signal` payload, byte for byte (Elixir nodes run queues of the same table, and crash on
a key they do not know). Every Kerrera node that hears a command meant for it re-reads
the table and reconciles its producers with it, so the table is the single truth: a node
that starts later, or that missed signals while its notifier was down, converges on it
too. The command's Oban signals are its echo on Kerrera nodes, and are not applied
again. Signals from Elixir nodes (not persisted) are applied as they come.

Effective state of a queue on a node, field by field: the node's own row, else the
row for every node, else this node's configuration.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kerrera.core.backoff import reconnect_backoff
from kerrera.core.errors import ConfigError
from kerrera.core.options import check_queue
from kerrera.engine.base import Engine, QueueSignal
from kerrera.queue import Producer
from kerrera.queue.signals import DEFAULT_NAMES, addressed_to, command_signal, echo_key
from kerrera.services.every import Background, run_every

log = logging.getLogger("kerrera.control")

#: Seconds a Kerrera node waits for a command's Oban signals after its control message.
#: They arrive right after it (one transaction, one connection): the window only bounds
#: what a lost one leaves behind.
ECHO_WINDOW = 30.0


@dataclass(frozen=True, slots=True)
class QueueState:
    """What one running queue should be on this node (queues that should not run are
    simply absent from `effective`'s result)."""

    limit: int
    paused: bool


#: The queue fields each command sets.
COMMAND_FIELDS: dict[str, tuple[str, ...]] = {
    "pause": ("paused",), "resume": ("paused",), "scale": ("limit",),
    "start": ("running", "limit"), "stop": ("running",),
}  # fmt: skip


def queue_command(
    action: str, queue: str, node: str | None, limit: int | None = None
) -> tuple[dict[str, Any], QueueSignal]:
    """Validate an operator's command; return the fields it persists and how it is
    announced."""
    check_queue(queue)
    if node is not None and (not isinstance(node, str) or not node):
        raise ConfigError(f"option 'node' must be a node name or None, got {node!r}")
    if action in ("scale", "start") and (
        isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
    ):
        raise ConfigError(f"option 'limit' must be an integer >= 1, got {limit!r}")
    if action not in ("scale", "start"):
        limit = None
    persisted: dict[str, dict[str, Any]] = {
        "pause": {"paused": True}, "resume": {"paused": False}, "scale": {"limit": limit},
        "start": {"running": True, "limit": limit}, "stop": {"running": False},
    }  # fmt: skip
    return persisted[action], command_signal(action, queue, node, limit)


async def send_queue_command(
    engine: Engine, control: QueueControl | None, here: str, action: str, queue: str,
    node: str | None, limit: int | None = None,
) -> None:  # fmt: skip
    """An operator's queue command: validated, persisted and announced in one
    transaction (every node re-reads the table; Elixir nodes hear Oban's signal), and
    applied on this node (`here`, if `control` runs it) before returning."""
    changes, signal = queue_command(action, queue, node, limit)
    await engine.set_queue_state(queue, node or "", changes, signal)
    if control is not None and node in (None, here):
        await control.refresh((action, queue))


def effective(
    configured: Mapping[str, int],
    rows: list[tuple[str, str, Any, Any, Any]],
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, QueueState]:
    """Merge persisted commands over the configuration (node row > all-nodes row), and
    the unpersisted commands of Elixir nodes (`overrides`) over both."""
    merged: dict[str, dict[str, Any]] = {}
    for queue, _node, paused, limit, running in sorted(rows, key=lambda r: r[1] != ""):
        slot = merged.setdefault(queue, {})
        for key, value in (("paused", paused), ("limit", limit), ("running", running)):
            if value is not None:
                slot[key] = value  # node rows sort after '' and so win
    for queue, fields in (overrides or {}).items():
        merged.setdefault(queue, {}).update(fields)
    out: dict[str, QueueState] = {}
    for queue in {*configured, *merged}:
        slot = merged.get(queue, {})
        limit = slot.get("limit", configured.get(queue))
        running = slot.get("running", queue in configured)
        if running and limit is not None:
            out[queue] = QueueState(int(limit), bool(slot.get("paused", False)))
    return out


class QueueControl(Background):
    """Keeps this node's producers in line with the persisted queue state: on every
    signal meant for it, after the notifier reconnects, and every `interval` seconds
    (so that a missed signal or a failed read is made good)."""

    task_name = "kerrera-queue-control"

    def __init__(
        self, engine: Engine, node: str, configured: Mapping[str, int],
        producers: dict[str, Producer],
        make_producer: Callable[[str, int, bool, list[Producer]], Producer],
        on_changed: Callable[[bool], Any], grace: float, interval: float = 10.0,
    ) -> None:  # fmt: skip
        self._engine = engine
        self.node = node
        self.configured = dict(configured)
        self.producers = producers
        #: Producers stopped by stop_queue that are still letting their jobs finish: they
        #: keep heartbeating and can still be pkilled.
        self.draining: dict[str, Producer] = {}
        #: Fields set by Elixir nodes' signals, per queue (not persisted).
        self.overrides: dict[str, dict[str, Any]] = {}
        #: Instance names a signal for this node may carry (see `addressed_to`): the
        #: defaults and every name seen leading in `oban_peers`.
        self.names: set[str] = set(DEFAULT_NAMES)
        #: Queues an Elixir `start` may start here: configured, or run since it started.
        self.known: set[str] = set(configured)
        #: (deadline, key) of Kerrera commands' Oban signals still to come (see `on_command`).
        self._echoes: deque[tuple[float, tuple[Any, ...]]] = deque(maxlen=1024)
        self._make_producer = make_producer
        self._on_changed = on_changed
        self.grace = grace
        self.interval = interval
        self._lock = asyncio.Lock()
        self._requested = 0  # refreshes asked for
        self._applied = 0  # the last request whose table read has been applied
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()

    async def _run(self) -> None:
        await run_every(self.interval, self.refresh, log, "reading queue state", first_now=False)

    def close(self) -> None:
        """The node is stopping: from now on, no command starts or changes a queue."""
        self._closed = True

    async def refresh(self, command: tuple[str, str] | None = None) -> None:
        """Read the table and reconcile; returns once a read that began after this call
        was applied (concurrent calls share one read). `command` is the (action, queue)
        of a newer Kerrera command, which replaces Elixir overrides of the fields it sets
        (and only those)."""
        if command is not None:
            action, queue = command
            for q in list(self.overrides) if queue == "*" else [queue]:
                fields = self.overrides.get(q, {})
                for name in COMMAND_FIELDS.get(action, ()):
                    fields.pop(name, None)
                if not fields:
                    self.overrides.pop(q, None)
        self._requested += 1
        mine = self._requested
        async with self._lock:
            if self._applied >= mine or self._closed:
                return
            target = self._requested
            rows = await self._engine.queue_states(self.node)
            self.names.update(await self._engine.instance_names())
            if self._closed:
                return
            new = self.apply(effective(self.configured, rows, self.overrides))
            self._applied = target
            # Heartbeat before a new producer fetches anything, so the lifeline knows it
            # from its first job (else its jobs would wait for rescue_after): if that
            # fails, the new producers are dropped and the next refresh tries again.
            try:
                await self._notify_changed(required=bool(new))
            except Exception:
                for producer in new:
                    self.producers.pop(producer.queue, None)
                self._applied = 0
                raise
            for producer in new:
                producer.start()

    def refresh_soon(self, command: tuple[str, str] | None = None) -> None:
        """`refresh` from a callback (a notification): a failed read is retried with
        backoff (and the periodic reconcile catches anything else)."""
        self._track(asyncio.create_task(self._refresh_logged(command)))

    async def _refresh_logged(self, command: tuple[str, str] | None) -> None:
        failures = 0
        while not self._closed:
            try:
                await self.refresh(command)
                return
            except Exception as exc:  # a signal's command must not wait for the next period
                failures += 1
                delay = min(self.interval, reconnect_backoff(failures))
                log.warning("could not read queue state (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)

    def apply(self, wanted: Mapping[str, QueueState]) -> list[Producer]:
        """Stop, scale, pause and resume producers to match `wanted`; return the new
        producers it created, for the caller to start."""
        new = []
        for queue, state in wanted.items():
            producer = self.producers.get(queue)
            if producer is None:
                previous = [p for p in self.draining.values() if p.queue == queue]
                producer = self._make_producer(queue, state.limit, state.paused, previous)
                self.producers[queue] = producer
                self.known.add(queue)
                new.append(producer)
                log.info(
                    "queue %s on %s: limit %d%s",
                    queue,
                    self.node,
                    state.limit,
                    " (paused)" if state.paused else "",
                )
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
        self.draining[producer.uuid] = producer
        self._track(asyncio.create_task(self._stop(producer)))
        log.info("queue %s stopping on %s", queue, self.node)

    async def _stop(self, producer: Producer) -> None:
        try:
            await producer.stop(self.grace)
        finally:
            self.draining.pop(producer.uuid, None)
        if producer.clean:  # else its row expires and the lifeline rescues what is left
            try:
                await self._engine.forget_producers([producer.uuid])
            except Exception as exc:  # the row expires on its own
                log.warning("could not remove producer row (%s)", exc)
        await self._notify_changed()

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def addressed(self, ident: object) -> bool:
        """Whether a signal with this ident is for this node."""
        return addressed_to(ident, self.node, self.names)

    def on_signal(self, message: Mapping[str, Any]) -> None:
        """Route a notification from Oban's signal channel: `pkill` stops the job wherever
        it runs here (draining queues included); a queue signal addressed to this node is
        applied, unless it is a Kerrera command's own, whose control message has had the
        table re-read already."""
        if message.get("action") == "pkill":
            job_id = message.get("job_id")
            if type(job_id) is int:
                for producer in [*self.producers.values(), *self.draining.values()]:
                    producer.kill(job_id)
        elif (
            self.addressed(message.get("ident"))
            and not self._is_echo(message)
            and self.apply_signal(message)
        ):
            self._track(asyncio.create_task(self._notify_changed()))

    def on_command(self, message: Mapping[str, Any]) -> None:
        """Route a Kerrera queue command heard on the control channel: note which of its
        Oban signals address this node, so that they are not applied again as Elixir's
        (they come right after), and re-read the table if the command is for this node.

        Should a signal ever arrive before its command, it is applied as Elixir's, and
        the command's re-read then replaces that override with the table's value."""
        action, queue, node = message.get("command"), message.get("queue"), message.get("node")
        if self._closed or not isinstance(action, str) or not isinstance(queue, str):
            return
        idents = message.get("idents")
        deadline = time.monotonic() + ECHO_WINDOW
        for ident in idents if isinstance(idents, list) else ():
            if self.addressed(ident):
                key = echo_key(action, ident, queue, message.get("limit"))
                self._echoes.append((deadline, key))
        if node in (None, "", self.node):
            self.refresh_soon((action, queue))

    def _is_echo(self, message: Mapping[str, Any]) -> bool:
        """Whether `message` is an expected Oban signal of a Kerrera command (consumed)."""
        now = time.monotonic()
        while self._echoes and self._echoes[0][0] < now:
            self._echoes.popleft()
        key = echo_key(*(message.get(k) for k in ("action", "ident", "queue", "limit")))
        for i, (_, expected) in enumerate(self._echoes):
            if expected == key:
                del self._echoes[i]
                return True
        return False

    def apply_signal(self, message: Mapping[str, Any]) -> bool:
        """Apply an Elixir node's (unpersisted) signal; True if it changed a local
        producer. It is kept as an override, so later reconciles do not undo it."""
        if self._closed:
            return False
        action, queue = message.get("action"), message.get("queue")
        if action == "start":
            return self._start_signalled(message)
        targets = [q for q in self.producers if queue in ("*", q)]
        limit = message.get("limit")
        if action == "pause":
            change: dict[str, Any] = {"paused": True}
        elif action == "resume":
            change = {"paused": False}
        elif action == "scale" and type(limit) is int and limit > 0:
            change = {"limit": limit}
        elif action == "stop":
            change = {"running": False}
        else:
            return False
        for q in targets:
            self.overrides.setdefault(q, {}).update(change)
            producer = self.producers[q]
            if action == "pause":
                producer.pause()
            elif action == "resume":
                producer.resume()
            elif action == "scale":
                producer.scale(limit)  # type: ignore[arg-type]
            else:
                self.stop_producer(q)
        return bool(targets)

    def _start_signalled(self, message: Mapping[str, Any]) -> bool:
        """Elixir's `start`, as Oban does it: start the queue with the signal's `limit`
        unless it already runs here (a running queue is left as it is, limit included).

        Elixir sends a start to "any" node, Kerrera's included, so a Kerrera node starts
        only a queue it knows: one in its configuration, or one it ran since it started
        (Kerrera's `start_queue` starts the others). A queue it never ran is most likely
        an Elixir queue, whose jobs it cannot run, so that start is ignored. The queue is
        created by a reconcile, which heartbeats first, as for any new queue."""
        queue, limit = message.get("queue"), message.get("limit")
        if not isinstance(queue, str) or queue not in self.known or queue in self.producers:
            return False
        if type(limit) is not int or limit < 1:
            return False
        fields = self.overrides.setdefault(queue, {})
        fields.pop("paused", None)  # an earlier Elixir pause was the stopped producer's
        fields.update(running=True, limit=limit)
        if type(message.get("paused")) is bool:
            fields["paused"] = message["paused"]
        self.refresh_soon()
        return False

    async def _notify_changed(self, *, required: bool = False) -> None:
        result = self._on_changed(required)
        if asyncio.iscoroutine(result):
            await result

    async def wait_stopped(self) -> None:
        """Wait for queues being stopped and refreshes in flight (the node is stopping)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
