"""Several real node processes on one database: kill -9, leader failover, cluster-wide
pause from another process, and cron ticks while nodes restart. The evidence is the
ledger the workers append to and the jobs table."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from acceptance.nodes import Node, until
from acceptance.nodeworkers import read_events, traced

from kerrera import Kerrera

FAST_LIFELINE = ("--heartbeat-interval", "0.2", "--producer-ttl", "2", "--rescue-interval", "0.2")
#: How a cron job's meta names its tick (the minute, in the entry's zone: UTC here).
TICK_FORMAT = "%Y-%m-%dT%H:%M"


def _states(client: Kerrera, ids: list[int]) -> Counter[str]:
    return Counter(str(j.state) for j in _all(client, ids))


def _all(client: Kerrera, ids: list[int]) -> list[Any]:
    return [client.sync.get_job(i) for i in ids]


def _max_running(events: list[tuple[str, str, int, str]]) -> dict[str, int]:
    now: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    for event, _tag, _attempt, node in events:
        now[node] += 1 if event == "start" else -1
        peak[node] = max(peak[node], now[node])
    return dict(peak)


def test_kill_9_of_one_of_three_nodes_loses_nothing_and_runs_nothing_twice(
    start_node: Callable[..., Node], client: Kerrera, tmp_path: Path
) -> None:
    path = tmp_path / "ledger"
    nodes = {
        name: start_node(name=name, queues="default:4", extra=FAST_LIFELINE)
        for name in ("n1", "n2", "n3")
    }
    jobs = client.sync.insert_all(
        [traced.new({"path": str(path), "tag": f"j{i}", "seconds": 0.4}) for i in range(90)]
    )
    ids = [j.id for j in jobs]
    until(lambda: sum(1 for e in read_events(path) if e[0] == "start" and e[3] == "n2") >= 4)
    nodes["n2"].proc.send_signal(signal.SIGKILL)
    nodes["n2"].wait(timeout=10)
    killed_at = len(read_events(path))
    until(lambda: _states(client, ids)["completed"] == 90, timeout=60)

    events = read_events(path)
    finishes = Counter(tag for event, tag, _, _ in events if event == "finish")
    assert set(finishes) == {f"j{i}" for i in range(90)} and set(finishes.values()) == {1}
    # n2's unfinished jobs were run again elsewhere, but only after n2 died
    orphans = {tag for event, tag, _, node in events[:killed_at] if node == "n2"} - {
        tag for event, tag, _, node in events[:killed_at] if event == "finish" and node == "n2"
    }
    assert orphans, "the kill should have interrupted some jobs"
    for tag in orphans:
        starts = [
            (i, node)
            for i, (event, t, _, node) in enumerate(events)
            if event == "start" and t == tag
        ]
        assert starts[0][1] == "n2"
        assert all(i >= killed_at for i, node in starts if node != "n2")
    for tag, count in Counter(t for e, t, _, _ in events if e == "start").items():
        assert count == (2 if tag in orphans else 1), tag
    rescued = [j for j in _all(client, ids) if j.meta.get("rescued")]
    assert {f"j{ids.index(j.id)}" for j in rescued} == orphans
    assert all(peak <= 4 for peak in _max_running(events).values())
    for name in ("n1", "n3"):
        nodes[name].signal(signal.SIGTERM)
        assert nodes[name].wait(timeout=15) == 0, nodes[name].stderr


def test_killing_the_leader_elects_another_within_the_lease(
    start_node: Callable[..., Node], client: Kerrera
) -> None:
    lease = ("--leader-lease", "4")
    nodes = {name: start_node(name=name, extra=lease) for name in ("l1", "l2", "l3")}
    leader = until(lambda: asyncio.run(client.leader()))
    assert leader in nodes
    nodes[leader].proc.send_signal(signal.SIGKILL)
    nodes[leader].wait(timeout=10)
    # Once the dead leader's 4 s lease runs out, a follower (they look every 2 s) takes
    # it. The wait allows for a loaded machine and still ends long before the default
    # 30 s lease would: the lease given is the one that counts.
    successor = until(
        lambda: (lambda n: n if n not in (None, leader) else None)(asyncio.run(client.leader())),
        timeout=15,
    )
    assert successor in nodes
    # A graceful stop hands over without waiting for the lease: the stopped node gave it
    # up before it exited (it no longer holds a live lease), and a third node takes it.
    nodes[successor].signal(signal.SIGTERM)
    assert nodes[successor].wait(timeout=15) == 0, nodes[successor].stderr
    assert asyncio.run(client.leader()) != successor
    third = until(
        lambda: (lambda n: n if n not in (None, leader, successor) else None)(
            asyncio.run(client.leader())
        ),
        timeout=10,
    )
    assert third in nodes


def test_pause_from_another_process_stops_every_node_and_survives_restarts(
    start_node: Callable[..., Node], run: Callable[..., Node], client: Kerrera, tmp_path: Path
) -> None:
    path = tmp_path / "ledger"
    nodes = {name: start_node(name=name, queues="default:3") for name in ("p1", "p2", "p3")}
    asyncio.run(client.pause_queue("default"))
    report = asyncio.run(client.check_all_queues())
    assert {(r["node"], r["paused"]) for r in report} == {("p1", True), ("p2", True), ("p3", True)}
    # One second each: the nodes take about two rounds, so p1 (scaled to 1 below) gets a
    # share even if it wakes up late.
    jobs = client.sync.insert_all(
        [traced.new({"path": str(path), "tag": f"p{i}", "seconds": 1}) for i in range(12)]
    )
    # a node restarting during the pause comes back paused
    nodes["p2"].signal(signal.SIGTERM)
    assert nodes["p2"].wait(timeout=15) == 0
    nodes["p2"] = start_node(name="p2", queues="default:3")
    time.sleep(1.5)  # longer than the poll interval: nothing may start on any node
    assert read_events(path) == []
    scaled = run("queues", "scale", "default", "1", "--node", "p1")  # the operator's CLI
    assert scaled.wait(timeout=30) == 0, scaled.stderr
    assert "scale: queue default on node p1" in scaled.stdout
    asyncio.run(client.resume_queue("default"))
    until(lambda: _states(client, [j.id for j in jobs])["completed"] == 12, timeout=20)
    report = asyncio.run(client.check_all_queues())
    assert {(r["node"], r["limit"], r["paused"]) for r in report} == {
        ("p1", 1, False),
        ("p2", 3, False),
        ("p3", 3, False),
    }
    assert _max_running(read_events(path)).get("p1") == 1  # it ran jobs, one at a time
    listing = run("queues", "--json")
    assert listing.wait(timeout=30) == 0, listing.stderr
    rows = json.loads(listing.stdout)
    assert sorted((r["node"], r["limit"]) for r in rows) == [("p1", 1), ("p2", 3), ("p3", 3)]


def test_cron_ticks_are_inserted_once_while_nodes_start_and_die(
    start_node: Callable[..., Node], client: Kerrera, sql: Any
) -> None:
    cron = ("--cron", "* * * * * acceptance.nodeworkers.ticked", "--leader-lease", "3")
    first = start_node(name="c1", queues="cron:1", extra=cron)
    name = "acceptance.nodeworkers.ticked * * * * *"
    until(lambda: sql("SELECT count(*) FROM kerrera_cron WHERE name = %s", (name,))[0][0])
    # Owe the cluster five minutes of ticks, then let nodes race for them and kill the
    # leader in the middle of it all.
    sql(
        "UPDATE kerrera_cron SET last_tick = timezone('UTC', now()) - interval '5 minutes' "
        "+ interval '2 seconds'"
    )
    others = [start_node(name=f"c{i}", queues="cron:1", extra=cron) for i in (2, 3)]
    first.proc.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    again = start_node(name="c1", queues="cron:1", extra=cron)
    until(
        lambda: (
            sql("SELECT count(*) FROM oban_jobs WHERE meta->>'cron_name' = %s", (name,))[0][0] >= 5
        ),
        timeout=20,
    )
    time.sleep(4)  # leadership settles on a survivor after the kill: still nothing twice
    ticks = sql(
        "SELECT meta->>'cron_tick', count(*) FROM oban_jobs "
        "WHERE meta->>'cron_name' = %s GROUP BY 1 ORDER BY 1",
        (name,),
    )
    assert len(ticks) >= 5 and all(n == 1 for _, n in ticks), ticks
    states = sql(
        "SELECT DISTINCT state::text FROM oban_jobs WHERE meta->>'cron_name' = %s", (name,)
    )
    # None failed. One may still wait for a slot, or still be held by the killed node
    # (executing, until the lifeline rescues it).
    assert {s for (s,) in states} <= {"completed", "available", "executing"}, states
    # And the next real tick comes, once, from whichever node leads now.
    before = {t for t, _ in ticks}
    fresh = until(
        lambda: [
            t
            for (t,) in sql(
                "SELECT meta->>'cron_tick' FROM oban_jobs WHERE meta->>'cron_name' = %s", (name,)
            )
            if t not in before
        ],
        timeout=75,
    )
    (tick,) = fresh
    # It is the minute after the last one owed (none was skipped), and it was not
    # inserted before its minute began (both by the database's clock).
    last = max(datetime.strptime(t, TICK_FORMAT) for t in before)
    assert tick == (last + timedelta(minutes=1)).strftime(TICK_FORMAT), (tick, sorted(before))
    inserted = sql(
        "SELECT inserted_at FROM oban_jobs WHERE meta->>'cron_tick' = %s AND "
        "meta->>'cron_name' = %s",
        (tick, name),
    )[0][0]
    assert inserted >= datetime.strptime(tick, TICK_FORMAT), (inserted, tick)
    time.sleep(1)  # a second node inserting the tick would show by now: still one job
    assert sql("SELECT count(*) FROM oban_jobs WHERE meta->>'cron_tick' = %s", (tick,)) == [(1,)]
    for node in [*others, again]:
        node.signal(signal.SIGTERM)
        assert node.wait(timeout=15) == 0, node.stderr
