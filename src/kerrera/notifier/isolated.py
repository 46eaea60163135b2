"""An in-process notifier: messages reach listeners in this process only."""

from __future__ import annotations

import asyncio

from kerrera.notifier import payload
from kerrera.notifier.base import ListenerRegistry, Message


class IsolatedNotifier(ListenerRegistry):
    """Delivers notifications within one process, on the loop the notifier runs on.

    For unit tests of the runtime, users' fast tests, and single-process apps that want
    no LISTEN connection: a local insert wakes the local producer at once and a local
    `cancel_job` stops the job, but nothing reaches other processes (their jobs are
    found by polling) and nothing from them arrives here.

    The engine sends nothing with `pg_notify` then: it hands its messages over after
    each statement, and for a statement inside a caller's transaction, once that
    transaction has ended (a rolled-back insert costs a producer one empty fetch).

    Example: `Kerrera(queues={"default": 5}, notifier="isolated")`.
    """

    #: The engine's statements must not `pg_notify`: nobody in this process would hear it.
    transactional = False

    async def start(self) -> None:
        """Deliver from now on; report the notifier up."""
        self._loop = asyncio.get_running_loop()
        self._up = True
        for listener in self._status:
            listener(True)

    async def stop(self) -> None:
        """Report the notifier down and drop deliveries still waiting."""
        self._up = False
        self._cancel_held()

    async def notify(self, channel: str, *messages: Message) -> None:
        """Deliver `messages` to this process's listeners of `channel`: at once when
        called on the notifier's loop, else on that loop."""
        loop = self._loop
        if loop is None or loop is asyncio.get_running_loop():
            self._deliver_all(channel, messages)
        elif not loop.is_closed():
            loop.call_soon_threadsafe(self._deliver_all, channel, messages)

    def _deliver_all(self, channel: str, messages: tuple[Message, ...]) -> None:
        for message in messages:
            # Through the wire form, so that listeners get exactly what PostgreSQL would
            # hand them (fresh objects, JSON types only).
            text = message if isinstance(message, str) else payload.encode(message)
            self._deliver(channel, payload.decode(text))
