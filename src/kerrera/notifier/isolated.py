"""An in-process notifier: messages reach listeners in this process only (for tests)."""

from __future__ import annotations

from typing import Any

from kerrera.notifier.base import Listener, StatusListener


class IsolatedNotifier:
    """Delivers notifications within one process, synchronously on `notify`.

    Useful for unit tests of the runtime and for single-process apps that want no
    LISTEN connection; jobs inserted by other processes are then found by polling.
    """

    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = {}
        self._status: list[StatusListener] = []
        self._up = False

    @property
    def connected(self) -> bool:
        return self._up

    def listen(self, channel: str, listener: Listener) -> None:
        self._listeners.setdefault(channel, []).append(listener)

    def on_status(self, listener: StatusListener) -> None:
        self._status.append(listener)

    async def start(self) -> None:
        self._up = True
        for listener in self._status:
            listener(True)

    async def stop(self) -> None:
        self._up = False

    async def notify(self, channel: str, message: dict[str, Any]) -> None:
        for listener in self._listeners.get(channel, []):
            listener(channel, message)
