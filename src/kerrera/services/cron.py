"""Cron (leader only): inserts each entry's job once per tick across the whole cluster.

Every minute the leader runs one transaction: it locks the entries' rows in
`kerrera_cron`, inserts a job for every tick after each entry's last evaluated instant
(at most `catch_up` seconds back, so a leadership change or a short outage loses no
tick), and advances the rows to the database clock. Two nodes that both believe they
lead queue up on the row locks and the second finds nothing owed. Ticks are computed
from the database clock, so nodes with skewed clocks agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from kerrera import telemetry
from kerrera.core.cron_entries import CronEntry
from kerrera.core.crontab import ticks
from kerrera.core.job import Job
from kerrera.engine.base import Engine
from kerrera.services.every import Background
from kerrera.services.leader import Leadership

log = logging.getLogger("kerrera.cron")


class Cron(Background):
    """Evaluates `entries` on the leader at every minute and when leadership is won."""

    task_name = "kerrera-cron"

    def __init__(
        self, engine: Engine, leadership: Leadership, entries: Sequence[CronEntry], *,
        catch_up: float = 300.0,
    ) -> None:  # fmt: skip
        self._engine = engine
        self._leadership = leadership
        self.entries = tuple(entries)
        self.catch_up = catch_up
        self._rebooted = False
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Evaluate now (this node just became the leader)."""
        self._wake.set()

    async def _run(self) -> None:
        now = datetime.now(UTC).replace(tzinfo=None)
        if not self._leadership.is_leader:
            # @reboot belongs to the node that leads as it boots; one that takes over
            # later did not boot the cluster.
            self._rebooted = True
        while True:
            # A wake-up that came before this evaluation (winning leadership at start)
            # is served by it: do not evaluate twice in a row for it.
            self._wake.clear()
            if self._leadership.is_leader:
                try:
                    _, now = await self.evaluate_once()
                except Exception as exc:  # the next minute catches the ticks up
                    log.warning("cron evaluation failed (%s)", exc)
            # Wake just after the next minute starts on the database clock.
            into_minute = now.second + now.microsecond / 1e6
            delay = min(60.0, max(0.05, 60.0 - into_minute + 0.05))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            now += timedelta(seconds=delay)

    async def evaluate_once(self) -> tuple[list[Job], datetime]:
        """Insert every tick owed now; return the jobs inserted and the database time
        (and emit the `cron` event)."""
        meta: dict[str, object] = {"node": self._leadership.node, "jobs": []}
        with telemetry.timed("cron", meta) as measurements:
            inserted, now = await self._evaluate()
            meta["jobs"] = inserted
            measurements["count"] = len(inserted)
        return inserted, now

    async def _evaluate(self) -> tuple[list[Job], datetime]:
        timed = [e for e in self.entries if not e.expression.reboot]
        saved: list[Job] = []
        if timed:
            saved, now = await self._engine.insert_cron([e.name for e in timed], self._plan)
        else:
            now = await self._engine.db_now()
        if not self._rebooted:
            reboot = [e.build(None) for e in self.entries if e.expression.reboot]
            if reboot:
                saved += await self._engine.insert_jobs(reboot)
            self._rebooted = True
        inserted = [j for j in saved if not j.conflict]
        if inserted:
            log.info("cron inserted %d job(s)", len(inserted))
        return inserted, now

    def _plan(self, last: dict[str, datetime], now: datetime) -> list[Job]:
        until = now.replace(tzinfo=UTC)
        floor = until - timedelta(seconds=self.catch_up)
        jobs = []
        for entry in self.entries:
            if entry.expression.reboot or entry.name not in last:
                continue
            after = max(last[entry.name].replace(tzinfo=UTC), floor)
            seen: set[datetime] = set()
            for _utc, local in ticks(entry.expression, entry.zone, after, until):
                if local not in seen:  # a wall-clock minute repeated by DST runs once
                    seen.add(local)
                    jobs.append(entry.build(local))
        return jobs
