"""Chains: links of one partition run one at a time, in insertion order, on any node; the
next link is released by the ack of the previous one (a trigger), never by polling."""

from __future__ import annotations

import asyncio
import itertools
import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import eventually
from support.compose_workers import EVENTS, Callback, HoldLink, Link

from kerrera import Chain, ConfigError, Worker, chain_id, worker

LINKS = (
    "SELECT id, (meta->>'chain_seq')::bigint, state::text, attempted_at, completed_at, "
    "attempt, attempted_by, inserted_at "
    "FROM oban_jobs WHERE meta->>'chain_id' = %s ORDER BY (meta->>'chain_seq')::bigint"
)


def links(sql: Any, worker: Any, key: str) -> list[tuple[Any, ...]]:
    return sql(LINKS, (chain_id(worker, {"chain": key}),))


def assert_ran_in_order(rows: list[tuple[Any, ...]], key: str | None = None) -> None:
    """The links of `rows` (in chain order) all completed, one after another: in the
    database, each one was claimed after the one before it completed; and, for the links
    this process ran (`key`), each one started after the one before it ended."""
    assert all(r[2] == "completed" for r in rows), [r[2] for r in rows]
    for before, after in itertools.pairwise(rows):
        assert after[3] >= before[4], "\n".join(
            f"seq {r[1]} attempt {r[5]} by {r[6]} ran {r[3]:%S.%f} - {r[4]:%S.%f}"
            for r in rows[max(0, before[1] - 4) : before[1] + 3]
        )
    if key is not None:
        assert_one_at_a_time([(seq, event) for k, seq, event in EVENTS if k == key])


def assert_one_at_a_time(events: list[tuple[int, str]]) -> None:
    """Starts and ends alternate, in chain order: no link starts before the previous one
    ended (a link may run again: its retries). A start with no end (its node was killed)
    is followed by its rerun's start."""
    expected = "start"
    last = 0
    for i, (seq, event) in enumerate(events):
        rerun = event == "start" and expected == "end" and seq == last
        assert event == expected or rerun, events[max(0, i - 4) : i + 2]
        if event == "start":  # (the same link again: its retry, or its rerun)
            assert seq >= last, events[max(0, i - 4) : i + 2]
        last, expected = seq, ("end" if event == "start" else "start")


@pytest.fixture(autouse=True)
def _forget_events() -> None:
    EVENTS.clear()


def test_chain_option_is_checked() -> None:
    assert Chain.coerce(True) == Chain()
    assert Chain.coerce({"args": "account"}).args == ("account",)
    with pytest.raises(ConfigError, match="did you mean 'on_failure'"):
        Chain.coerce({"on_fail": "hold"})
    with pytest.raises(ConfigError, match="'on_failure' must be"):
        Chain(on_failure="stop")
    with pytest.raises(ConfigError, match="option 'chain'"):

        class Bad(Worker, chain="yes"):  # type: ignore[misc]
            pass


def test_links_carry_their_partition() -> None:
    a = Link.new({"chain": "a", "n": 1})
    b = Link.new({"chain": "b"})
    assert a.meta["chain_id"] == f'{Link.name}["a"]' == chain_id(Link, {"chain": "a"})
    assert a.meta["chain_id"] != b.meta["chain_id"]
    assert "chain_on_failure" not in a.meta
    assert HoldLink.new({"chain": "a"}).meta["chain_on_failure"] == "hold"
    assert Link.new({"chain": "a"}, meta={"chain_id": "mine"}).meta["chain_id"] == "mine"

    @worker(queue="chains", chain=True)
    async def whole(job: Any) -> None: ...

    assert whole.new({"x": 1}).meta["chain_id"] == whole.name == chain_id(whole)
    with pytest.raises(ConfigError, match="no chain= option"):
        chain_id(Callback)
    by_meta = Chain(args=("a",), meta=("tenant",))
    assert by_meta.chain_id("w", {"a": 1}, {"tenant": "t"}) == 'w[1,"t"]'
    assert by_meta.chain_id("w", {}, None) == "w[null,null]"


async def test_a_link_waits_for_the_one_before(make_app: Any, sql: Any) -> None:
    app = make_app()
    saved = await app.insert_all([Link.new({"chain": "a", "n": i}) for i in range(3)])
    saved += await app.insert_all([Link.new({"chain": "b"})])
    assert [str(j.state) for j in saved] == ["available", "suspended", "suspended", "available"]
    rows = links(sql, Link, "a")
    assert [(r[1], r[2]) for r in rows] == [(1, "available"), (2, "suspended"), (3, "suspended")]
    status = await app.chain(chain_id(Link, {"chain": "a"})).status()
    assert (status.waiting, status.active_id, status.inserted) == (2, rows[0][0], 3)
    assert not status.held
    # the ack of the first (here by hand, as any node's would be) releases the second only
    sql("UPDATE oban_jobs SET state = 'executing' WHERE id = %s", (rows[0][0],))
    sql("UPDATE oban_jobs SET state = 'completed' WHERE id = %s", (rows[0][0],))
    assert [r[2] for r in links(sql, Link, "a")] == ["completed", "available", "suspended"]
    # an operator's retry of a waiting link does not start it out of turn
    assert str((await app.retry_job(rows[2][0])).state) == "suspended"
    # a waiting link that is cancelled is skipped; the chain goes on past it
    await app.cancel_job(rows[2][0])
    sql("UPDATE oban_jobs SET state = 'completed' WHERE id = %s", (rows[1][0],))
    assert [r[2] for r in links(sql, Link, "a")] == ["completed", "completed", "cancelled"]
    status = await app.chain(chain_id(Link, {"chain": "a"})).status()
    assert (status.waiting, status.active_id) == (0, None)
    with pytest.raises(LookupError):
        await app.chain("nothing").status()


async def test_deleting_the_running_link_releases_the_next(make_app: Any, sql: Any) -> None:
    app = make_app()
    first, second, third = await app.insert_all([Link.new({"chain": "d"}) for _ in range(3)])
    await app.delete_job(first.id)
    assert [r[2] for r in links(sql, Link, "d")] == ["available", "suspended"]
    await app.delete_job(third.id)  # a waiting one: nothing else moves
    assert [r[2] for r in links(sql, Link, "d")] == ["available"]
    status = await app.chain(chain_id(Link, {"chain": "d"})).status()
    assert (status.active_id, status.waiting) == (second.id, 0)


async def test_a_unique_conflict_does_not_stall_the_chain(make_app: Any, sql: Any) -> None:
    """An insert that hits a unique conflict ran the BEFORE trigger anyway: the chain
    must not count that phantom link as running or waiting."""
    app = make_app()
    first = await app.insert(Link.new({"chain": "u", "n": 1}, unique=True))
    again = await app.insert(Link.new({"chain": "u", "n": 1}, unique=True))
    assert again.conflict and again.id == first.id
    last = await app.insert(Link.new({"chain": "u", "n": 2}))
    assert str(last.state) == "suspended"
    sql("UPDATE oban_jobs SET state = 'executing' WHERE id = %s", (first.id,))
    sql("UPDATE oban_jobs SET state = 'completed' WHERE id = %s", (first.id,))
    assert [r[2] for r in links(sql, Link, "u")] == ["completed", "available"]
    # an operator re-running an old link does not let a second link of the chain start
    sql("UPDATE oban_jobs SET state = 'available' WHERE id = %s", (first.id,))
    sql("UPDATE oban_jobs SET state = 'completed' WHERE id = %s", (first.id,))
    more = await app.insert(Link.new({"chain": "u", "n": 3}))
    assert str(more.state) == "suspended"


async def test_links_run_in_order_on_several_nodes(make_app: Any, sql: Any) -> None:
    nodes = [make_app(queues={"chains": 5}, node=f"n{i}") for i in range(3)]
    for node in nodes:
        await node.start()
    for key in ("a", "b"):
        await nodes[0].insert_all([Link.new({"chain": key, "n": i}) for i in range(30)])
    await eventually(
        lambda: sql("SELECT count(*) FROM oban_jobs WHERE state = 'completed'")[0][0] == 60,
        timeout=30,
    )
    for key in ("a", "b"):
        assert_ran_in_order(links(sql, Link, key), key)
    by_node = sql("SELECT DISTINCT attempted_by[1] FROM oban_jobs")
    assert len(by_node) >= 2  # every node could take the next link


async def test_concurrent_inserters_keep_one_order(
    make_app: Any, sql: Any, dsn: str, prefix: str
) -> None:
    """Inserters in concurrent transactions take turns on the chain's row: the links get
    distinct numbers, one runs at a time, and each inserter's links keep their order."""
    app = make_app()
    await app.insert(Link.new({"chain": "warm"}))  # (opens the engine: schema migrated)

    async def inserter(k: int) -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            for i in range(0, 40, 4):
                async with conn.transaction():
                    await app.insert_all(
                        [Link.new({"chain": "x", "k": k, "i": i + j}) for j in range(4)],
                        conn=conn,
                    )

    await asyncio.gather(*(inserter(k) for k in range(4)))
    rows = links(sql, Link, "x")
    assert [r[1] for r in rows] == list(range(1, 161))
    assert [r[2] for r in rows].count("available") == 1 and rows[0][2] == "available"
    nodes = [make_app(queues={"chains": 3}, node=f"n{i}") for i in range(2)]
    for node in nodes:
        await node.start()
    await eventually(lambda: all(r[2] == "completed" for r in links(sql, Link, "x")), timeout=30)
    rows = links(sql, Link, "x")
    assert_ran_in_order(rows, "x")
    args = dict(sql("SELECT id, args FROM oban_jobs"))
    for k in range(4):
        mine = [args[r[0]]["i"] for r in rows if args[r[0]].get("k") == k]
        assert mine == list(range(40))


async def test_a_thousand_links_on_three_nodes(make_app: Any, sql: Any) -> None:
    nodes = [make_app(queues={"chains": 10}, node=f"n{i}") for i in range(3)]
    await nodes[0].insert_all([Link.new({"chain": "long", "n": i}) for i in range(1000)])
    for node in nodes:
        await node.start()
    await eventually(
        lambda: sql("SELECT count(*) FROM oban_jobs WHERE state = 'completed'")[0][0] == 1000,
        timeout=120,
        interval=0.5,
    )
    rows = links(sql, Link, "long")
    assert [r[1] for r in rows] == list(range(1, 1001))
    assert_ran_in_order(rows, "long")
    assert len(EVENTS) == 2000
    args = dict(sql("SELECT id, args FROM oban_jobs"))
    assert [args[r[0]]["n"] for r in rows] == list(range(1000))


async def test_a_failed_link_holds_the_chain_until_retried(make_app: Any, sql: Any) -> None:
    app = make_app(queues={"chains": 5})
    await app.start()
    await app.insert_all(
        [
            HoldLink.new({"chain": "h", "n": 0}),
            HoldLink.new({"chain": "h", "cancel": True, "once": True}),
        ]
        + [HoldLink.new({"chain": "h", "n": i}) for i in range(2, 4)]
    )
    cid = chain_id(HoldLink, {"chain": "h"})
    await eventually(
        lambda: [r[2] for r in links(sql, HoldLink, "h")][:2] == ["completed", "cancelled"]
    )
    status = await app.chain(cid).status()
    rows = links(sql, HoldLink, "h")
    assert status.held and status.held_by == rows[1][0]
    assert [r[2] for r in rows[2:]] == ["suspended", "suspended"]
    await app.insert(HoldLink.new({"chain": "h", "n": 4}))  # joins the queue behind it
    assert links(sql, HoldLink, "h")[-1][2] == "suspended"
    resumed = await app.chain(cid).resume()  # its second attempt completes: the chain goes on
    assert resumed is not None and resumed.id == rows[1][0]
    await eventually(lambda: all(r[2] == "completed" for r in links(sql, HoldLink, "h")))
    assert_ran_in_order(links(sql, HoldLink, "h"), "h")
    assert not (await app.chain(cid).status()).held
    assert await app.chain(cid).resume() is None


async def test_release_skips_the_failed_link(make_app: Any, sql: Any) -> None:
    app = make_app(queues={"chains": 5})
    await app.start()
    await app.insert_all(
        [HoldLink.new({"chain": "r", "fail_until": 99}, max_attempts=1)]
        + [HoldLink.new({"chain": "r", "n": i}) for i in range(1, 3)]
    )
    cid = chain_id(HoldLink, {"chain": "r"})
    await eventually(lambda: links(sql, HoldLink, "r")[0][2] == "discarded")
    assert (await app.chain(cid).status()).held
    assert [r[2] for r in links(sql, HoldLink, "r")[1:]] == ["suspended", "suspended"]
    released = await app.chain(cid).release()
    assert released == links(sql, HoldLink, "r")[1][0]
    await eventually(
        lambda: [r[2] for r in links(sql, HoldLink, "r")] == ["discarded", "completed", "completed"]
    )
    with pytest.raises(LookupError):
        await app.chain("nothing").release()


async def test_continue_and_retryable(make_app: Any, sql: Any) -> None:
    """A cancelled link of a "continue" chain releases the next one; a link waiting for
    its retry is unfinished and keeps the next one waiting."""
    app = make_app(queues={"chains": 5})
    await app.start()
    await app.insert_all(
        [
            Link.new({"chain": "c", "cancel": True}),
            Link.new({"chain": "c", "fail_until": 3}),
            Link.new({"chain": "c", "n": 2}),
        ]
    )
    await eventually(
        lambda: [r[2] for r in links(sql, Link, "c")] == ["cancelled", "completed", "completed"]
    )
    rows = links(sql, Link, "c")
    runs = [(seq, event) for key, seq, event in EVENTS if key == "c"]
    assert_one_at_a_time(runs)  # the last waited for both retries of the second
    assert [seq for seq, event in runs if event == "start"] == [1, 2, 2, 2, 3]
    attempts = sql("SELECT attempt FROM oban_jobs WHERE id = %s", (rows[1][0],))
    assert attempts == [(3,)]


FAST_LIFELINE = ("--heartbeat-interval", "0.2", "--producer-ttl", "2", "--rescue-interval", "0.2")


async def test_kill_9_of_a_node_midway_keeps_the_order(
    start_node: Any, make_app: Any, sql: Any, tmp_path: Path
) -> None:
    """A node process running the chain is killed -9: its link stays `executing` (so the
    next one stays suspended) until the lifeline of another node rescues it; the chain
    then goes on, in order, with nothing lost and nothing run twice to completion."""
    node = start_node(
        name="doomed",
        queues="chains:3",
        extra=("--module", "support.compose_workers", *FAST_LIFELINE),
    )
    app = make_app(heartbeat_interval=0.2, producer_ttl=2.0, rescue_interval=0.2)
    log = tmp_path / "links"
    await app.insert_all(
        [Link.new({"chain": "k", "n": i, "sleep": 0.1, "log": str(log)}) for i in range(40)]
    )
    await eventually(
        lambda: sql("SELECT count(*) FROM oban_jobs WHERE state = 'completed'")[0][0] >= 8
    )
    node.proc.send_signal(signal.SIGKILL)
    node.proc.wait(timeout=10)
    killed = sql("SELECT id FROM oban_jobs WHERE state = 'executing'")
    assert len(killed) == 1  # the running link; every later one waits
    survivor = make_app(
        queues={"chains": 3}, node="survivor",
        heartbeat_interval=0.2, producer_ttl=2.0, rescue_interval=0.2,
    )  # fmt: skip
    await survivor.start()
    await eventually(
        lambda: sql("SELECT count(*) FROM oban_jobs WHERE state = 'completed'")[0][0] == 40,
        timeout=60,
    )
    rows = links(sql, Link, "k")
    assert_ran_in_order(rows)
    lines = [line.split() for line in log.read_text().splitlines()]
    assert_one_at_a_time([(int(seq), event) for event, _key, seq in lines])
    assert [int(seq) for event, _key, seq in lines if event == "end"] == list(range(1, 41))
    (rescued,) = sql("SELECT attempt, meta->>'rescued' FROM oban_jobs WHERE id = %s", killed[0])
    assert rescued == (2, "1")
    assert sql("SELECT count(*) FROM oban_jobs WHERE attempt > 1") == [(1,)]
