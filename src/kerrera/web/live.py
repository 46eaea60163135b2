"""Live updates: one LISTEN connection per server process, fanned out to every open tab
as server-sent events, debounced.

The feed listens on Kerrera's insert, events and control channels. Anything heard marks
the dashboard dirty; at most once per `debounce` seconds every connected tab receives a
`changed` event and fetches the part of its page that shows data. While notifications
are down (the connection is lost), the feed falls back to sending `changed` every
`poll` seconds, so pages keep refreshing. While at least one tab is connected it tells
the nodes every few seconds that someone watches, so that producers publish job starts
and outcomes (a cluster nobody watches pays nothing for them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from kerrera.engine.postgres import PostgresEngine
from kerrera.events.pubsub import WATCH_EVERY, WATCH_MESSAGE
from kerrera.notifier import IsolatedNotifier, Notifier, PostgresNotifier

log = logging.getLogger("kerrera.web")

#: Seconds between keep-alive comments on an idle stream (proxies cut silent ones).
KEEPALIVE = 15.0
#: Control messages that change nothing shown (watching, asking nodes to report, which
#: the queues page itself does): never a reason to refresh.
_QUIET_ACTIONS = frozenset({"watch", "watchers", "report"})


class LiveFeed:
    """The process's one listener; `stream()` is what each tab's event source reads."""

    def __init__(self, engine: PostgresEngine, *, debounce: float = 0.5, poll: float = 2.0) -> None:
        self.engine = engine
        self.debounce = debounce
        self.poll = poll
        self.clients = 0
        self.version = 0
        self._dirty = asyncio.Event()
        self._changed = asyncio.Event()
        self._notifier: Notifier | None = None
        self._own = False
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def connected(self) -> bool:
        """Whether notifications arrive now (False: pages are refreshed by polling)."""
        return self._notifier is not None and self._notifier.connected

    async def start(self) -> None:
        """Listen, and start the debounce and watch loops."""
        shared = self.engine.notifier
        if isinstance(shared, IsolatedNotifier):  # in-process: nothing to connect
            self._notifier, self._own = shared, False
        else:
            self._notifier, self._own = PostgresNotifier(self.engine), True
        sql = self.engine.sql
        for channel in (sql.insert_channel, sql.events_channel, sql.control_channel):
            self._notifier.listen(channel, self._heard)
        self._notifier.on_status(lambda _up: self._dirty.set())
        if self._own:
            await self._notifier.start()
        self._tasks = [
            asyncio.create_task(self._debounce(), name="kerrera-web-debounce"),
            asyncio.create_task(self._watch(), name="kerrera-web-watch"),
        ]

    async def stop(self) -> None:
        """Stop the loops and release the listening connection."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._changed.set()  # wake the streams so they end
        if self._notifier is not None and self._own:
            await self._notifier.stop()
        self._notifier = None

    def _heard(self, _channel: str, message: dict[str, Any]) -> None:
        if message.get("action") in _QUIET_ACTIONS:
            return
        self._dirty.set()

    def poke(self) -> None:
        """Mark the dashboard changed (after an action of this process)."""
        self._dirty.set()

    async def _debounce(self) -> None:
        while True:
            timeout = None if self.connected else self.poll
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), timeout)
            # Collect the rest of a burst: one refresh for a thousand inserts.
            await asyncio.sleep(self.debounce)
            self._dirty.clear()
            if self.clients:
                self.version += 1
                changed, self._changed = self._changed, asyncio.Event()
                changed.set()

    async def _watch(self) -> None:
        while True:
            if self.clients and self._notifier is not None:
                try:
                    await self._notifier.notify(self.engine.sql.control_channel, WATCH_MESSAGE)
                except Exception as exc:  # the next round tries again
                    log.warning("could not tell the nodes the dashboard watches (%s)", exc)
            await asyncio.sleep(WATCH_EVERY)

    async def stream(self) -> AsyncIterator[str]:
        """Server-sent events for one tab: `status` (live or polling) at once and when it
        changes, `changed` when data changed, and comments to keep the stream open."""
        self.clients += 1
        self._dirty.set()  # announce the new watcher soon
        try:
            # Read before the first yield: whatever changes while the consumer is away
            # from this generator must still be announced when it comes back.
            seen = self.version
            status = self.connected
            yield "retry: 3000\n\n"
            yield _event("status", {"live": status})
            while self._tasks:
                changed = self._changed
                if self.version == seen:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), KEEPALIVE)
                if self.connected != status:
                    status = self.connected
                    yield _event("status", {"live": status})
                if self.version != seen:
                    seen = self.version
                    yield _event("changed", {"version": seen})
                else:
                    yield ": keep-alive\n\n"
        finally:
            self.clients -= 1


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"
