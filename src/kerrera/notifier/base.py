"""The notifier contract: publish small messages on channels and hear them everywhere.

Every notification Kerrera sends goes through the app's notifier. The engine's own
statements (insert, stage, retry, cancel's pkill, ...) are the one special case: with a
`transactional` notifier they send with `pg_notify` inside the statement, so that a
notification is delivered only if its rows commit, at no extra round trip; with an
in-process notifier they skip it, and the engine hands the same messages to the notifier
once the statement (and the caller's transaction) is done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("kerrera.notifier")

#: Called with (channel, decoded message).
Listener = Callable[[str, dict[str, Any]], None]
#: Called with True when notifications start flowing, False when they stop.
StatusListener = Callable[[bool], None]
#: A message to send: a JSON object, or one already encoded by `payload.encode` (callers
#: that must check the encoded size first, such as `publish`).
Message = dict[str, Any] | str
#: Returns True while a delivery must wait (the caller's transaction is still open).
Hold = Callable[[], bool]

# Seconds between two checks of a `Hold`: from the first to the longest.
_HOLD_FIRST = 0.002
_HOLD_LONGEST = 0.25


class Notifier(Protocol):
    """Delivers messages between nodes. Delivery is best-effort: producers also poll."""

    @property
    def transactional(self) -> bool:
        """True when `pg_notify` inside the engine's statements reaches this notifier's
        listeners (PostgreSQL: delivered at commit, with the rows); False when the
        engine must hand the messages to `notify` after the statement instead."""

    @property
    def connected(self) -> bool:
        """Whether notifications are currently being received."""

    def listen(self, channel: str, listener: Listener) -> None:
        """Call `listener` for each message on `channel` (set up before `start`)."""

    def on_status(self, listener: StatusListener) -> None:
        """Call `listener` whenever the notifier goes up or down."""

    async def start(self) -> None:
        """Begin receiving."""

    async def stop(self) -> None:
        """Stop receiving and release the connection."""

    async def notify(self, channel: str, *messages: Message) -> None:
        """Send `messages` (one or many, in one round trip) to every listener of
        `channel` on every node."""

    def notify_threadsafe(self, channel: str, *messages: Message, hold: Hold | None = None) -> None:
        """Send from any thread without waiting: the messages go out on the loop the
        notifier runs on. With `hold`, they wait until `hold()` returns False."""


class ListenerRegistry:
    """What every notifier shares: who listens to what, up/down state, the loop it runs
    on, and sending from other threads. Subclasses implement `notify`."""

    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = {}
        self._status: list[StatusListener] = []
        self._up = False
        # The loop it was made on (an app makes it when it opens its engine); `start`
        # sets it again, so deliveries always go where the node runs.
        self._loop: asyncio.AbstractEventLoop | None = _running_loop()
        self._held: set[asyncio.Task[None]] = set()

    @property
    def connected(self) -> bool:
        """Whether notifications are currently being received."""
        return self._up

    def listen(self, channel: str, listener: Listener) -> None:
        """Call `listener` for each message on `channel` (set up before `start`)."""
        self._listeners.setdefault(channel, []).append(listener)

    def on_status(self, listener: StatusListener) -> None:
        """Call `listener` whenever the notifier goes up or down."""
        self._status.append(listener)

    async def notify(self, channel: str, *messages: Message) -> None:
        """Send `messages` on `channel` (see `Notifier.notify`)."""
        raise NotImplementedError

    def notify_threadsafe(self, channel: str, *messages: Message, hold: Hold | None = None) -> None:
        """Send from any thread without waiting (see `Notifier.notify_threadsafe`).
        Messages for a loop that is gone are dropped: nobody listens there any more."""
        loop = self._loop
        if loop is None or loop.is_closed():
            log.debug("no running notifier: dropping %d message(s) on %s", len(messages), channel)
            return
        try:
            loop.call_soon_threadsafe(self._send_later, channel, messages, hold)
        except RuntimeError:  # the loop closed meanwhile
            log.debug("notifier loop closed: dropping %d message(s)", len(messages))

    def _send_later(self, channel: str, messages: tuple[Message, ...], hold: Hold | None) -> None:
        task = asyncio.get_running_loop().create_task(self._send_when(channel, messages, hold))
        self._held.add(task)
        task.add_done_callback(self._held.discard)

    async def _send_when(
        self, channel: str, messages: tuple[Message, ...], hold: Hold | None
    ) -> None:
        delay = _HOLD_FIRST
        while hold is not None and hold():
            await asyncio.sleep(delay)
            delay = min(delay * 2, _HOLD_LONGEST)
        try:
            await self.notify(channel, *messages)
        except Exception as exc:  # best effort, like every notification: producers poll
            log.warning("could not send %d message(s) on %s (%s)", len(messages), channel, exc)

    def _cancel_held(self) -> None:
        """Drop deliveries still waiting (the notifier stops)."""
        for task in list(self._held):
            task.cancel()

    def _deliver(self, channel: str, message: dict[str, Any]) -> None:
        for listener in self._listeners.get(channel, []):
            try:
                listener(channel, message)
            except Exception:  # one failing listener must not starve the others
                log.exception("notification listener failed on %s", channel)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
