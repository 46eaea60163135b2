"""The reindexer (leader only): rebuilds the jobs table's indexes on a schedule.

A queue table churns: every job is inserted, updated a few times and deleted, and its
B-tree and GIN indexes bloat. `REINDEX INDEX CONCURRENTLY` rebuilds each one without
blocking writers (Kerrera's or an Elixir node's). A rebuild that was interrupted leaves
an invalid `_ccnew` index behind, which is dropped first.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from kerrera import telemetry
from kerrera.core.crontab import CronExpression, next_tick
from kerrera.engine.base import Engine
from kerrera.services.every import Background
from kerrera.services.leader import Leadership

log = logging.getLogger("kerrera.reindexer")


class Reindexer(Background):
    """Rebuilds the indexes at every tick of `schedule` (a cron expression, in UTC)."""

    task_name = "kerrera-reindexer"

    def __init__(self, engine: Engine, leadership: Leadership, schedule: CronExpression) -> None:
        self._engine = engine
        self._leadership = leadership
        self.schedule = schedule

    async def _run(self) -> None:
        while True:
            now = datetime.now(UTC)
            due = next_tick(self.schedule, UTC, now)
            if due is None:
                return
            await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()) + 0.05)
            if not self._leadership.is_leader:
                continue
            try:
                await self.reindex_once()
            except Exception as exc:  # try again at the next tick
                log.warning("reindexing failed (%s)", exc)

    async def reindex_once(self) -> list[str]:
        """Drop leftovers of interrupted rebuilds, then rebuild every index; return the
        names rebuilt (and emit the `reindexer` event)."""
        rebuilt: list[str] = []
        meta = {"node": self._leadership.node, "indexes": rebuilt}
        with telemetry.timed("reindexer", meta) as measurements:
            await self._reindex(rebuilt)
            measurements["count"] = len(rebuilt)
        return rebuilt

    async def _reindex(self, rebuilt: list[str]) -> None:
        for name, leftover in await self._engine.job_indexes():
            if leftover:
                await self._engine.rebuild_index(name, drop=True)
                log.info("dropped leftover index %s", name)
        for name, leftover in await self._engine.job_indexes():
            if not leftover:
                await self._engine.rebuild_index(name)
                rebuilt.append(name)
        log.info("rebuilt %d index(es)", len(rebuilt))
