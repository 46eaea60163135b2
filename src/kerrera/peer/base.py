"""The peer contract: a lease that at most one instance of a cluster holds at a time.

Leadership (`services/leader.py`) decides when to ask: a leader renews at half its
lease, a follower tries every couple of seconds, and a node that stops resigns. The
peer only answers: did this instance get (or keep) the lease, give it up, who holds it.
An instance is known by its node name and the moment it started, so two processes given
the same node name still elect one leader.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

#: Kerrera's lease name (Elixir's default instance is "Oban"): in `oban_peers` it keeps
#: Kerrera's leader apart from an Elixir Oban's sharing the database.
PEER_NAME = "Kerrera"


class Peer(Protocol):
    """Holds one named leadership lease for a cluster of instances."""

    @property
    def name(self) -> str:
        """The lease's name (the `down` of a resignation notification carries it)."""

    async def elect(self, node: str, started_at: datetime, lease: float) -> bool:
        """Take the lease if nobody holds it or it expired, renew it if this instance
        (`node`, `started_at`) holds it, for `lease` seconds. True while it leads."""

    async def resign(self, node: str, started_at: datetime) -> None:
        """Give the lease up if this instance holds it, so that another takes it now."""

    async def leader(self) -> str | None:
        """The node holding the unexpired lease, if any."""
