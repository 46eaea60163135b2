"""What every service shares: one background task, and the periodic loop that acts,
waits, and never dies on an error."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from kerrera.core.backoff import reconnect_backoff


async def run_every(
    interval: float, action: Callable[[], Awaitable[Any]], log: logging.Logger, what: str,
    *, first_now: bool = True,
) -> None:  # fmt: skip
    """Run `action` every `interval` seconds (first at once when `first_now`). A failure
    is logged and retried with jittered backoff, never less than `interval` apart."""
    failures = 0
    if not first_now:
        await asyncio.sleep(interval)
    while True:
        try:
            await action()
            failures = 0
            await asyncio.sleep(interval)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a database error must not end the service
            failures += 1
            delay = max(interval, reconnect_backoff(failures))
            log.warning("%s failed (%s); retrying in %.2fs", what, exc, delay)
            await asyncio.sleep(delay)


class Background:
    """A service that runs one task (`_run`) on the running loop until stopped."""

    task_name = "kerrera-service"
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin the service's task (call on the running loop)."""
        self._task = asyncio.create_task(self._run(), name=self.task_name)

    async def stop(self) -> None:
        """Cancel the task and wait for it to end."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        raise NotImplementedError
