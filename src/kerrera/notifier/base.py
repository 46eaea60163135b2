"""The notifier contract: publish small messages on channels and hear them everywhere."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

#: Called with (channel, decoded message).
Listener = Callable[[str, dict[str, Any]], None]
#: Called with True when notifications start flowing, False when they stop.
StatusListener = Callable[[bool], None]


class ListenerRegistry:
    """The bookkeeping every notifier shares: who listens to what, and up/down state."""

    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = {}
        self._status: list[StatusListener] = []
        self._up = False

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


class Notifier(Protocol):
    """Delivers messages between nodes. Delivery is best-effort: producers also poll."""

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

    async def notify(self, channel: str, message: dict[str, Any]) -> None:
        """Send `message` to every listener of `channel` on every node."""
