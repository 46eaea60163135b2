"""An in-process notifier: messages reach listeners in this process only (for tests)."""

from __future__ import annotations

from typing import Any

from kerrera.notifier.base import ListenerRegistry


class IsolatedNotifier(ListenerRegistry):
    """Delivers notifications within one process, synchronously on `notify`.

    Useful for unit tests of the runtime and for single-process apps that want no
    LISTEN connection; jobs inserted by other processes are then found by polling.
    """

    async def start(self) -> None:
        self._up = True
        for listener in self._status:
            listener(True)

    async def stop(self) -> None:
        self._up = False

    async def notify(self, channel: str, message: dict[str, Any]) -> None:
        for listener in self._listeners.get(channel, []):
            listener(channel, message)
