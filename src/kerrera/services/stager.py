"""The stager (leader only): moves due scheduled and retryable jobs to available, every
second.

Staging is one guarded, bounded statement with SKIP LOCKED, so even two nodes that both
believe they lead do no harm; the statement notifies each queue that received jobs, and the
local producers are woken directly as well (so staging works with notifications down).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from kerrera import telemetry
from kerrera.engine.base import Engine
from kerrera.services.every import Background, run_every

log = logging.getLogger("kerrera.stager")


class Stager(Background):
    """Runs `stage_jobs` every `interval` seconds; `on_staged(queue)` wakes producers."""

    task_name = "kerrera-stager"

    def __init__(
        self, engine: Engine, on_staged: Callable[[str], None], *,
        interval: float = 1.0, limit: int = 5000, should_run: Callable[[], bool] = lambda: True,
        node: str = "",
    ) -> None:  # fmt: skip
        self.node = node
        self._engine = engine
        self._should_run = should_run
        self._on_staged = on_staged
        self.interval = interval
        self.limit = limit

    async def _run(self) -> None:
        await run_every(self.interval, self._stage, log, "staging")

    async def _stage(self) -> None:
        if self._should_run():  # the leader's job (it is harmless but wasteful twice)
            await self.stage_once()

    async def stage_once(self) -> dict[str, int]:
        """Stage until fewer than `limit` jobs were due; return counts by queue (and emit
        the `stager` event)."""
        total: dict[str, int] = {}
        meta = {"node": self.node, "queues": total}
        with telemetry.timed("stager", meta) as measurements:
            while True:
                staged = await self._engine.stage_jobs(self.limit)
                for queue, n in staged.items():
                    total[queue] = total.get(queue, 0) + n
                    self._on_staged(queue)
                if sum(staged.values()) < self.limit:
                    measurements["count"] = sum(total.values())
                    return total
