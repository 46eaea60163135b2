"""The Postgres peer: the lease is a row of Oban's `oban_peers` table."""

from __future__ import annotations

from datetime import datetime

from kerrera.engine.base import Engine
from kerrera.peer.base import PEER_NAME


class PostgresPeer:
    """Elects one leader among every instance on the same database and prefix.

    The lease is the row `name` of `oban_peers`, taken, renewed and deleted by one
    guarded statement each in the engine (the peer runs no SQL itself), so two nodes can
    never both win. Resigning also notifies the other nodes on the leader channel (Oban's
    `{"down": name}`), and they try at once instead of at their next check. Rows under
    other names, such as an Elixir Oban's, are never touched.

    Example: `PostgresPeer(engine)`; `await peer.elect("web-1", started_at, 30.0)`.
    """

    def __init__(self, engine: Engine, name: str = PEER_NAME) -> None:
        self._engine = engine
        self._name = name

    @property
    def name(self) -> str:
        """The lease's name: its row in `oban_peers`."""
        return self._name

    async def elect(self, node: str, started_at: datetime, lease: float) -> bool:
        """Take or renew the lease row (see `Peer.elect`)."""
        return await self._engine.elect_leader(self._name, node, started_at, lease)

    async def resign(self, node: str, started_at: datetime) -> None:
        """Delete the lease row if it is ours, and notify the others."""
        await self._engine.resign_leader(self._name, node, started_at)

    async def leader(self) -> str | None:
        """The node of the unexpired lease row, if any."""
        return await self._engine.get_leader(self._name)
