"""`job.progress()`: the latest report is kept in `meta["progress"]` and published.

Reports are throttled per job. A report that arrives within `progress_interval` of the
last write is held (a newer one replaces it) and written when the interval ends, or
when the job ends, so subscribers always see the last word and never a flood. Writing is
one statement, guarded like an ack: a job that is no longer this attempt's (cancelled,
rescued) is not written to, and nothing is published for it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kerrera import telemetry
from kerrera.core import codec
from kerrera.core.context import CURRENT_APP
from kerrera.core.errors import ConfigError
from kerrera.core.job import Job, set_progress_reporter
from kerrera.events.wire import progress_message
from kerrera.queue.threads import DISPATCHER

if TYPE_CHECKING:
    from kerrera.app.facade import Kerrera

log = logging.getLogger("kerrera.progress")


class Progress:
    """The throttle of one running job's reports."""

    def __init__(self, job: Job, app: Kerrera) -> None:
        self._job = job
        self._app = app
        self._interval = app.config.progress_interval
        self._last = -math.inf  # monotonic time of the last write
        self._held: dict[str, Any] | None = None
        self._timer: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one write at a time, in the order reported

    async def report(self, entry: dict[str, Any]) -> None:
        """Write `entry` now, or hold it until the interval since the last write ends."""
        wait = self._last + self._interval - time.monotonic()
        if wait <= 0 and self._held is None and not self._lock.locked():
            async with self._lock:
                await self._write(entry)
            return
        self._held = entry
        if self._timer is None:
            self._timer = asyncio.create_task(self._later(max(wait, 0.0)))

    async def flush(self) -> None:
        """Write the held report now (the job is ending)."""
        timer, self._timer = self._timer, None
        if timer is not None and timer is not asyncio.current_task():
            timer.cancel()
        async with self._lock:
            held, self._held = self._held, None
            if held is not None:
                await self._write(held)

    async def _later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._timer = None
        await self.flush()

    async def _write(self, entry: dict[str, Any]) -> None:
        job = self._job
        assert job.id is not None
        message = progress_message(job.id, job.queue, job.worker, job.attempt, entry)
        self._last = time.monotonic()
        try:
            engine = self._app.engine
            written = await engine.write_progress(job.id, job.attempt, entry, message)
        except Exception as exc:  # progress is informative: never fail the job for it
            log.warning("job %s: could not write progress (%s)", job.id, exc)
            return
        if written:
            job.meta["progress"] = entry
            if telemetry.active("job.progress"):
                telemetry.execute(
                    "job.progress",
                    {"percent": entry.get("percent")},
                    {"job": job, "id": job.id, "worker": job.worker, "queue": job.queue,
                     "progress": entry},
                )  # fmt: skip


def entry_of(percent: Any, message: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Validate one report and build what is stored and published."""
    if percent is not None:
        ok = isinstance(percent, int | float) and not isinstance(percent, bool)
        if not ok or not math.isfinite(percent) or not 0 <= percent <= 100:
            raise ConfigError(f"progress: percent must be a number from 0 to 100, got {percent!r}")
    if message is not None and not isinstance(message, str):
        raise ConfigError(f"progress: message must be a string, got {message!r}")
    if data:
        try:
            codec.dumps(data)
        except TypeError as exc:
            raise ConfigError(f"progress: data is not JSON-serialisable: {exc}") from None
    at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    entry: dict[str, Any] = {"percent": percent, "message": message, "at": at}
    if data:
        entry["data"] = data
    return entry


# A report whose message and data take at most this many characters always fits in a
# notification (with the job's queue and worker names, at most 127 characters each, and
# the worst escaping), so the common small report skips the costly exact check.
_SURELY_FITS = 1000


async def report(job: Job, percent: Any, message: Any, data: dict[str, Any]) -> None:
    """`job.progress(...)`: validate, then write or hold."""
    entry = entry_of(percent, message, data)
    state = job.progress_state
    if state is None:
        if job.id is None:
            raise ConfigError("progress() is for a running job (this one is not saved)")
        try:
            app = CURRENT_APP.get()
        except LookupError:
            raise ConfigError("progress() is for a running job (no Kerrera runs it)") from None
        state = job.progress_state = Progress(job, app)
    size = len(message or "") + (len(codec.dumps(data)) if data else 0)
    if size > _SURELY_FITS:  # rare: encode it as it will be sent, to fail here if too large
        progress_message(job.id or 0, job.queue, job.worker, job.attempt, entry)
    await state.report(entry)


def report_from_thread(job: Job, percent: Any, message: Any, data: dict[str, Any]) -> None:
    """`job.progress_sync(...)`: hand the report to the loop that runs the job (the one
    that dispatched this thread) and wait for it."""
    loop = DISPATCHER.get(None)
    if loop is None:
        try:
            app = CURRENT_APP.get()
        except LookupError:
            raise ConfigError("progress_sync() is for a running job (no Kerrera runs it)") from None
        loop = app.loop
        if loop is None:
            raise ConfigError("progress_sync() is for a running job (the node is not running)")
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        raise ConfigError("progress_sync() is for sync workers: use `await job.progress()`")
    asyncio.run_coroutine_threadsafe(report(job, percent, message, data), loop).result()


class _Reporter:
    """`Job.progress()` and `Job.progress_sync()` land here (see `set_progress_reporter`)."""

    async def report(self, job: Job, percent: Any, message: Any, data: dict[str, Any]) -> None:
        await report(job, percent, message, data)

    def report_from_thread(
        self, job: Job, percent: Any, message: Any, data: dict[str, Any]
    ) -> None:
        report_from_thread(job, percent, message, data)


set_progress_reporter(_Reporter())
