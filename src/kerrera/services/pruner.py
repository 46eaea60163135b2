"""The pruner (leader only): deletes finished jobs once they are older than `max_age`.

Each batch is one short statement of at most `limit` rows with SKIP LOCKED, so pruning
never holds long locks and never waits for a job somebody else is touching.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from kerrera import telemetry
from kerrera.engine.base import Engine
from kerrera.services.every import Background, run_every
from kerrera.services.leader import Leadership

log = logging.getLogger("kerrera.pruner")


class Pruner(Background):
    """Every `interval` seconds, on the leader: delete completed, cancelled and discarded
    jobs older than their state's age in `max_age` (seconds; None keeps them)."""

    task_name = "kerrera-pruner"

    def __init__(
        self, engine: Engine, leadership: Leadership, max_age: Mapping[str, float | None], *,
        interval: float = 30.0, limit: int = 10_000,
    ) -> None:  # fmt: skip
        self._engine = engine
        self._leadership = leadership
        self.max_age = dict(max_age)
        self.interval = interval
        self.limit = limit

    async def _run(self) -> None:
        await run_every(self.interval, self._prune, log, "pruning", first_now=False)

    async def _prune(self) -> None:
        if self._leadership.is_leader:
            await self.prune_once()

    async def prune_once(self) -> dict[str, int]:
        """Prune batch after batch until one comes back short; return counts by state."""
        total: dict[str, int] = {}
        meta = {"node": self._leadership.node, "states": total}
        with telemetry.timed("pruner", meta) as measurements:
            while self._leadership.is_leader:
                counts = await self._engine.prune_jobs(self.max_age, self.limit)
                for state, n in counts.items():
                    total[state] = total.get(state, 0) + n
                if sum(counts.values()) < self.limit:
                    break
                await asyncio.sleep(0)  # let the node's own work in between batches
            measurements["count"] = sum(total.values())
        if total:
            log.info("pruned %s", total)
        return total
