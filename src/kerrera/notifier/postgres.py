"""LISTEN/NOTIFY notifier on one dedicated connection, reconnecting with backoff."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import psycopg

from kerrera.core.backoff import reconnect_backoff
from kerrera.engine.postgres import PostgresEngine
from kerrera.notifier import payload
from kerrera.notifier.base import ListenerRegistry, Message

log = logging.getLogger("kerrera.notifier")

#: Seconds one wait for notifications lasts before the loop checks whether to stop.
_WAIT = 0.5
#: Seconds `start` waits for the first LISTEN before going on without it.
_READY_WAIT = 5.0


class PostgresNotifier(ListenerRegistry):
    """Hears notifications on a dedicated connection (a pooled one would lose LISTEN).

    When the connection drops it reports itself down (producers then poll), reconnects
    with jittered backoff, and reports itself up again. PgBouncer in transaction mode
    cannot carry LISTEN: point the notifier at PostgreSQL itself.
    """

    #: The engine's statements notify inside their own transaction: LISTEN hears them.
    transactional = True

    def __init__(self, engine: PostgresEngine) -> None:
        super().__init__()
        self._engine = engine
        self._task: asyncio.Task[None] | None = None
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._stopping = False
        self._ready = asyncio.Event()

    async def start(self) -> None:
        """Start listening; wait (up to a few seconds) until LISTEN is in place, so that a
        signal sent right after the node started is heard. If the database is away, go
        on: producers poll meanwhile."""
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="kerrera-notifier")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), _READY_WAIT)

    async def stop(self) -> None:
        """End the listening loop and close its connection."""
        # Ask the loop to end rather than relying on cancellation alone: a task cancelled
        # while psycopg waits in notifies() was seen to stay stuck there. The flag ends the
        # loop at the next wait timeout at the latest.
        self._stopping = True
        self._cancel_held()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=_WAIT + 2)
            if not done:
                log.warning("the notifier did not stop in time; closing its connection")
        await self._close()

    async def notify(self, channel: str, *messages: Message) -> None:
        """Send `messages` with `pg_notify`, all in one statement (on a pooled
        connection: this works before `start` too, for apps that only insert)."""
        if messages:
            texts = [m if isinstance(m, str) else payload.encode(m) for m in messages]
            await self._engine.notify(channel, *texts)

    def _set_status(self, up: bool) -> None:
        if up == self._up:
            return
        self._up = up
        if up:
            self._ready.set()
        log.log(
            logging.INFO if up else logging.WARNING,
            "notifications %s",
            "up" if up else "down: polling until reconnected",
        )
        for listener in self._status:
            listener(up)

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                self._conn = await self._engine.listen_connection()
                for channel in self._listeners:
                    await self._conn.execute(f'LISTEN "{channel}"')
                failures = 0
                self._set_status(True)
                while not self._stopping:
                    async for note in self._conn.notifies(timeout=_WAIT):
                        self._dispatch(note.channel, note.payload)
                    if self._conn.closed:
                        raise psycopg.OperationalError("the notification connection closed")
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the notifier die: log, back off, retry
                self._set_status(False)
                failures += 1
                delay = reconnect_backoff(failures)
                log.warning("notifier connection failed (%s); retrying in %.2fs", exc, delay)
                await self._close()
                await asyncio.sleep(delay)

    def _dispatch(self, channel: str, raw: str) -> None:
        try:
            message = payload.decode(raw)
        except Exception:
            log.warning("dropping undecodable notification on %s: %.80r", channel, raw)
            return
        self._deliver(channel, message)
