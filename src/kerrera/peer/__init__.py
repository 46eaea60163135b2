"""The peer seam: who leads the cluster. It owns the leadership lease, nothing else:
taking or renewing it, giving it up and saying who holds it, behind the `Peer` protocol.
`PostgresPeer` keeps the lease as a row of Oban's `oban_peers` through the engine (the
only SQL), so every node on one database elects one leader; `IsolatedPeer` keeps it in
this process's memory, for tests and single-process apps. When to elect, renew and
resign, and what leading switches on, belong to `services.leader.Leadership` above.
"""

from __future__ import annotations

from kerrera.engine.base import Engine
from kerrera.peer.base import PEER_NAME, Peer
from kerrera.peer.isolated import IsolatedLeases, IsolatedPeer
from kerrera.peer.postgres import PostgresPeer

__all__ = ["PEER_NAME", "IsolatedLeases", "IsolatedPeer", "Peer", "PostgresPeer", "make_peer"]


def make_peer(kind: str, engine: Engine) -> Peer:
    """The peer named by the `peer` option ("postgres" or "isolated")."""
    return PostgresPeer(engine) if kind == "postgres" else IsolatedPeer()
