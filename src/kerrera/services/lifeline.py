"""Heartbeats and the lifeline: rescue the jobs of nodes that died, never of live ones.

Every node upserts a row per producer every `heartbeat_interval` seconds (one statement).
Every `rescue_interval` seconds each node runs one guarded statement that expires
producers silent for `producer_ttl` seconds and puts their executing jobs back to
`available` (or `discarded` when their attempts are spent), counting `meta.rescued`. The
statement is idempotent and uses SKIP LOCKED, so it is safe on every node at once.

Footgun: a live node cut off from the database for longer than `producer_ttl` is taken
for dead; its jobs may then run again elsewhere (its own late acks are ignored by the
guards). Execution is at least once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from kerrera import telemetry
from kerrera.engine.base import Engine
from kerrera.services.every import run_every

log = logging.getLogger("kerrera.lifeline")


class Lifeline:
    """Runs this node's heartbeat and the rescue of orphaned jobs."""

    def __init__(
        self, engine: Engine, producers: Callable[[], Sequence[tuple[str, str, str, str]]], *,
        heartbeat_interval: float = 10.0, producer_ttl: float = 30.0,
        rescue_interval: float = 15.0, rescue_after: float = 3600.0, node: str = "",
    ) -> None:  # fmt: skip
        self.node = node
        self._engine = engine
        self._producers = producers
        self.heartbeat_interval = heartbeat_interval
        self.producer_ttl = producer_ttl
        self.rescue_interval = rescue_interval
        self.rescue_after = rescue_after
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Heartbeat once (before any fetch), then keep both loops going."""
        try:
            await self.beat()
        except Exception as exc:  # the loop below retries; never fail the start for it
            log.warning("first heartbeat failed (%s); retrying", exc)
        finally:  # the loops run even if the first beat was cut short
            self._start_loops()

    def _start_loops(self) -> None:
        self._tasks = [
            asyncio.create_task(
                run_every(self.heartbeat_interval, self.beat, log, "heartbeat", first_now=False),
                name="kerrera-heartbeat",
            ),
            asyncio.create_task(
                run_every(self.rescue_interval, self.rescue_once, log, "rescue", first_now=False),
                name="kerrera-lifeline",
            ),
        ]

    async def stop(self, uuids: Sequence[str]) -> None:
        """Stop both loops and remove this node's producers (they stopped cleanly)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if uuids:
            try:
                await self._engine.forget_producers(uuids)
            except Exception as exc:  # their rows expire on their own
                log.warning("could not remove producer rows (%s)", exc)

    async def beat(self) -> None:
        """Record this node's producers as alive."""
        producers = self._producers()
        if producers:
            await self._engine.heartbeat(producers)

    async def rescue_once(self) -> int:
        """Rescue what can be rescued now; return how many jobs (and emit the
        `lifeline` event)."""
        with telemetry.timed("lifeline", {"node": self.node}) as measurements:
            rescued, expired = await self._engine.rescue_jobs(self.producer_ttl, self.rescue_after)
            measurements.update(rescued=rescued, expired=expired)
        if rescued or expired:
            log.warning("lifeline: %d producer(s) expired, %d job(s) rescued", expired, rescued)
        return rescued
