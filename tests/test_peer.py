"""The peer seam: the isolated peer elects without a database, the Postgres peer through
`oban_peers`, and an app with `peer="isolated"` leads on its own."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from conftest import eventually
from support.scripted import Scripted

from kerrera import ConfigError, Kerrera
from kerrera.peer import PEER_NAME, IsolatedLeases, IsolatedPeer, PostgresPeer
from kerrera.services import Leadership

A = ("a", datetime(2030, 1, 1))
B = ("b", datetime(2030, 1, 2))


class FakeClock:
    """Seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- isolated: no database ------------------------------------------------------------------


async def test_a_lone_isolated_peer_always_leads() -> None:
    peer = IsolatedPeer()
    assert peer.name == PEER_NAME
    assert await peer.leader() is None
    assert await peer.elect(*A, 30.0)
    assert await peer.elect(*A, 30.0)  # renewed
    assert await peer.leader() == "a"
    await peer.resign(*A)
    assert await peer.leader() is None


async def test_isolated_peers_sharing_leases_elect_one() -> None:
    leases = IsolatedLeases()
    a, b = IsolatedPeer(leases=leases), IsolatedPeer(leases=leases)
    assert await a.elect(*A, 30.0)
    assert not await b.elect(*B, 30.0)
    assert await b.leader() == "a"
    await b.resign(*B)  # not b's lease: it stays with a
    assert await a.leader() == "a"
    await a.resign(*A)
    assert await b.elect(*B, 30.0)
    assert not await a.elect(*A, 30.0)
    assert await a.leader() == "b"


async def test_isolated_leases_are_kept_apart_by_name() -> None:
    leases = IsolatedLeases()
    ours, theirs = IsolatedPeer(leases=leases), IsolatedPeer("Oban", leases=leases)
    assert await ours.elect(*A, 30.0)
    assert await theirs.elect(*B, 30.0)
    assert (await ours.leader(), await theirs.leader()) == ("a", "b")


async def test_an_expired_isolated_lease_is_taken_over() -> None:
    clock = FakeClock()
    leases = IsolatedLeases(clock)
    a, b = IsolatedPeer(leases=leases), IsolatedPeer(leases=leases)
    assert await a.elect(*A, 30.0)
    clock.now += 29.0
    assert await a.elect(*A, 30.0)  # renewed: valid 30 s from now
    clock.now += 29.0
    assert not await b.elect(*B, 30.0)
    clock.now += 2.0  # a stopped renewing: its lease ran out
    assert await a.leader() is None
    assert await b.elect(*B, 30.0)
    assert await a.leader() == "b"


async def test_leadership_over_isolated_peers_hands_over_on_stop() -> None:
    leases = IsolatedLeases()
    changes: list[bool] = []
    a = Leadership(IsolatedPeer(leases=leases), "a", on_change=changes.append)
    b = Leadership(IsolatedPeer(leases=leases), "b")
    await a.start()
    await b.start()
    try:
        assert a.is_leader and not b.is_leader
        await a.stop()
        assert not a.is_leader and changes == [True, False]
        # nobody notifies b (no database): it takes over at its next try
        await eventually(lambda: b.is_leader, timeout=5)
    finally:
        await a.stop()
        await b.stop()
    assert await b.peer.leader() is None  # b resigned too


# -- Postgres: the lease row in oban_peers --------------------------------------------------


async def test_postgres_peers_elect_one_renew_and_hand_over(make_app: Any, sql: Any) -> None:
    app = make_app()  # no queues: opens the engine and elects nothing itself
    await app.start()
    a, b = PostgresPeer(app.engine), PostgresPeer(app.engine)
    assert await a.elect(*A, 30.0)
    assert not await b.elect(*B, 30.0)
    assert await b.leader() == "a"
    [(first,)] = sql("SELECT expires_at FROM oban_peers WHERE name = %s", [PEER_NAME])
    assert await a.elect(*A, 3600.0)  # renewed, with a longer lease
    [(renewed,)] = sql("SELECT expires_at FROM oban_peers WHERE name = %s", [PEER_NAME])
    assert renewed - first > timedelta(minutes=30)
    await b.resign(*B)  # not b's lease: the row stays
    assert await a.leader() == "a"
    await a.resign(*A)
    assert sql("SELECT count(*) FROM oban_peers") == [(0,)]
    assert await a.leader() is None
    assert await b.elect(*B, 30.0)
    assert await a.leader() == "b"


async def test_an_expired_postgres_lease_is_taken_over(make_app: Any, sql: Any) -> None:
    app = make_app()
    await app.start()
    a, b = PostgresPeer(app.engine), PostgresPeer(app.engine)
    assert await a.elect(*A, 30.0)
    sql("UPDATE oban_peers SET expires_at = now() - interval '1 second'")  # a crashed
    assert await b.leader() is None
    assert await b.elect(*B, 30.0)
    assert sql("SELECT name, node FROM oban_peers") == [(PEER_NAME, "b")]


async def test_postgres_leases_are_kept_apart_by_name(make_app: Any, sql: Any) -> None:
    app = make_app()
    await app.start()
    ours, elixir = PostgresPeer(app.engine), PostgresPeer(app.engine, "Oban")
    assert await ours.elect(*A, 30.0)
    assert await elixir.elect(*B, 30.0)
    await ours.resign(*A)
    assert sql("SELECT name, node FROM oban_peers") == [("Oban", "b")]


# -- an app with peer="isolated" --------------------------------------------------------------


async def test_an_isolated_peer_app_leads_and_stages_without_the_lease_row(
    make_app: Any, sql: Any
) -> None:
    app = make_app(queues={"default": 1}, node="solo", peer="isolated", stage_interval=0.1)
    await app.migrate()
    # Another node holds the database lease: a Postgres-peer app would follow it.
    sql(f"INSERT INTO oban_peers VALUES ('{PEER_NAME}', 'other', now(), now() + interval '1 h')")
    later = await app.insert(Scripted.new({}, queue="elsewhere", schedule_in=3600))
    await app.start()
    assert app.is_leader
    assert await app.leader() == "solo"
    sql("UPDATE oban_jobs SET scheduled_at = now() - interval '1 second' WHERE id = %s", [later.id])
    # "elsewhere" runs on no node: only this app's stager can make the job available
    await eventually(lambda: sql("SELECT state FROM oban_jobs") == [("available",)])
    await app.stop()
    assert sql("SELECT node FROM oban_peers") == [("other",)]  # never touched


def test_the_peer_option_is_checked() -> None:
    with pytest.raises(ConfigError, match="option 'peer' must be 'postgres' or 'isolated'"):
        Kerrera("postgresql://unused", peer="redis")
    assert Kerrera("postgresql://unused").config.peer == "postgres"


async def test_leaders_on_one_database_ignore_an_isolated_peer_app(make_app: Any) -> None:
    shared = make_app(queues={"default": 1}, node="shared")
    solo = make_app(queues={"default": 1}, node="solo", peer="isolated")
    await shared.start()
    await solo.start()
    assert shared.is_leader and solo.is_leader  # two clusters: one each
    assert await shared.leader() == "shared"
    assert await solo.leader() == "solo"
