"""Leadership: one node of the cluster runs the services that must not run twice.

The lease itself is the peer's (`kerrera.peer`: a row of Oban's `oban_peers`, or in
memory); this decides when to ask for it. A leader renews its lease every half lease;
anyone may take a lease that expired. A leader that stops resigns (the Postgres peer
then sends a `leader` notification, and the others try at once).

A leader that cannot reach the database keeps believing it leads only until its last
lease would have expired, so two leaders never overlap by more than clock skew.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

from kerrera import telemetry
from kerrera.peer import Peer
from kerrera.services.every import Background

log = logging.getLogger("kerrera.leader")

#: Seconds between a follower's attempts to take an expired lease.
FOLLOWER_CHECK = 2.0


class Leadership(Background):
    """Elects this node through `peer` (unless `eligible` is False) and tells `on_change`
    when it wins or loses; `is_leader` is what leader-only services check before each run.

    Example: `Leadership(PostgresPeer(engine), "web-1", lease=30.0)`, then `await start()`.
    """

    task_name = "kerrera-leader"

    def __init__(
        self, peer: Peer, node: str, *, lease: float = 30.0, eligible: bool = True,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:  # fmt: skip
        self.peer = peer
        self.node = node
        self.lease = lease
        self.eligible = eligible
        self._on_change = on_change
        # The instance's identity in the lease row, together with the node name.
        self.started_at = datetime.now(UTC).replace(tzinfo=None)
        self._leading = False
        self._valid_until = 0.0  # monotonic deadline of the last lease we know we hold
        self._wake = asyncio.Event()

    @property
    def name(self) -> str:
        """The lease's name (a resignation notification names it)."""
        return self.peer.name

    @property
    def is_leader(self) -> bool:
        """True while this node holds an unexpired lease."""
        return self._leading and time.monotonic() < self._valid_until

    async def start(self) -> None:  # type: ignore[override]
        """Try once now (so a single node leads from its first second), then keep going."""
        if not self.eligible:
            return
        try:
            await self._elect_logged()
        finally:  # the loop runs even if this first try was cut short
            super().start()

    def wake(self) -> None:
        """Another leader resigned: try to take over now."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop electing; resign (with a notification) if leading."""
        await super().stop()
        if not self.eligible:
            return
        # Resign even if we do not believe we lead: an election cancelled by this stop
        # may have committed its lease anyway. The delete only matches our own row.
        self._set(False)
        try:
            await self.peer.resign(self.node, self.started_at)
        except Exception as exc:  # the lease then simply expires
            log.warning("could not resign leadership (%s)", exc)

    async def elect_once(self) -> bool:
        """One election: take or renew the lease. Returns whether this node leads."""
        asked = time.monotonic()
        meta = {"node": self.node, "was_leader": self._leading, "leader": False}
        with telemetry.timed("leader.election", meta):
            won = await self.peer.elect(self.node, self.started_at, self.lease)
            meta["leader"] = won
        if won:
            self._valid_until = asked + self.lease
        self._set(won)
        return won

    async def _elect_logged(self) -> None:
        try:
            await self.elect_once()
        except Exception as exc:  # keep leading until the lease we had runs out
            if self._leading and not self.is_leader:
                self._set(False)
            log.warning("leader election failed (%s)", exc)

    async def _run(self) -> None:
        while True:
            # A leader renews at half the lease. A follower looks every couple of
            # seconds (a conflicting insert that writes nothing), so a crashed leader is
            # replaced within about one lease of its last renewal.
            wait = self.lease / 2 if self._leading else min(self.lease / 2, FOLLOWER_CHECK)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
            self._wake.clear()
            await self._elect_logged()

    def _set(self, leading: bool) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        log.info("node %s %s leadership", self.node, "took" if leading else "lost")
        if self._on_change is not None:
            self._on_change(leading)
