"""The isolated peer: leases kept in this process's memory, no database."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from kerrera.peer.base import PEER_NAME

#: An instance: its node name and the moment it started.
Holder = tuple[str, datetime]


@dataclass(frozen=True)
class _Lease:
    holder: Holder
    expires: float  # on the leases' clock


class IsolatedLeases:
    """Leases by name, in memory: what `oban_peers` is to Postgres peers, for one
    process. Peers that share one elect one leader among them.

    `clock` (`time.monotonic`) returns seconds; tests pass their own to expire leases
    without waiting. Safe to share between threads (and so between event loops).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._held: dict[str, _Lease] = {}
        self._lock = threading.Lock()

    def elect(self, name: str, holder: Holder, lease: float) -> bool:
        """Take `name` if it is free or expired, renew it if `holder` has it."""
        with self._lock:
            now = self._clock()
            current = self._held.get(name)
            if current is not None and current.holder != holder and current.expires >= now:
                return False
            self._held[name] = _Lease(holder, now + lease)
            return True

    def resign(self, name: str, holder: Holder) -> None:
        """Free `name` if `holder` has it (anyone else's lease stays)."""
        with self._lock:
            current = self._held.get(name)
            if current is not None and current.holder == holder:
                del self._held[name]

    def leader(self, name: str) -> str | None:
        """The node holding the unexpired lease `name`, if any."""
        with self._lock:
            current = self._held.get(name)
            if current is None or current.expires < self._clock():
                return None
            return current.holder[0]


class IsolatedPeer:
    """A peer that needs no database, for unit tests and single-process apps.

    By default it has leases of its own, so the one instance that elects through it
    always leads (Oban's `Peers.Isolated`). Give several peers one `IsolatedLeases` and
    they elect one leader among them, as Postgres peers do through `oban_peers`. Nothing
    tells the others when a leader resigns: they take over at their next try (within a
    couple of seconds under `Leadership`).

    Example: `Kerrera(queues={"default": 5}, peer="isolated")`, or
    `leases = IsolatedLeases(); a, b = IsolatedPeer(leases=leases), IsolatedPeer(leases=leases)`.
    """

    def __init__(self, name: str = PEER_NAME, *, leases: IsolatedLeases | None = None) -> None:
        self._name = name
        self._leases = IsolatedLeases() if leases is None else leases

    @property
    def name(self) -> str:
        """The lease's name in the shared `IsolatedLeases`."""
        return self._name

    async def elect(self, node: str, started_at: datetime, lease: float) -> bool:
        """Take or renew the lease in memory (see `Peer.elect`)."""
        return self._leases.elect(self._name, (node, started_at), lease)

    async def resign(self, node: str, started_at: datetime) -> None:
        """Free the lease if this instance holds it."""
        self._leases.resign(self._name, (node, started_at))

    async def leader(self) -> str | None:
        """The node holding the unexpired lease, if any."""
        return self._leases.leader(self._name)
