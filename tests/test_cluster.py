"""Several nodes on one database (in one process): leadership, queue control, the
pruner, cron and the reindexer, each checked through the database."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from conftest import eventually
from support import scripted
from support.scripted import Scripted

from kerrera import ConfigError, Job, JobState, Kerrera, worker
from kerrera.services import Cron, Pruner, Reindexer


def _service(app: Kerrera, kind: type) -> Any:
    return next(s for s in app._node.services if isinstance(s, kind))


async def test_one_leader_and_a_fast_handover_on_stop(make_app: Any) -> None:
    a = make_app(queues={"default": 1}, node="a")
    b = make_app(queues={"default": 1}, node="b")
    never = make_app(queues={"default": 1}, node="never", leader=False)
    await a.start()
    await b.start()
    await never.start()
    assert a.is_leader and not b.is_leader and not never.is_leader
    assert await b.leader() == "a"
    await a.stop()
    # the resignation notifies b, which takes over long before the 30 s lease
    await eventually(lambda: b.is_leader, timeout=5)
    assert await never.leader() == "b" and not never.is_leader


async def test_an_expired_lease_is_taken_over(make_app: Any, sql: Any) -> None:
    a = make_app(queues={"default": 1}, node="a", leader_lease=2.0)
    await a.start()
    assert a.is_leader
    # a crash: a's elections stop and nobody resigns
    task = a._node.leadership._task
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    b = make_app(queues={"default": 1}, node="b", leader_lease=2.0)
    await b.start()
    assert not b.is_leader
    await eventually(lambda: b.is_leader, timeout=6)
    assert not a.is_leader  # its own lease ran out: it no longer believes it leads
    assert sql("SELECT node FROM oban_peers WHERE name = 'Kerrera'") == [("b",)]


async def test_kerrera_does_not_touch_an_elixir_leader(make_app: Any, sql: Any) -> None:
    app = make_app(queues={"default": 1})
    await app.migrate()
    sql("INSERT INTO oban_peers VALUES ('Oban', 'elixir@host', now(), now() + interval '1 h')")
    await app.start()
    assert app.is_leader
    await app.stop()
    assert sql("SELECT name, node FROM oban_peers") == [("Oban", "elixir@host")]


async def test_pause_from_anywhere_stops_every_node_and_persists(make_app: Any, sql: Any) -> None:
    a = make_app(queues={"default": 2}, node="a")
    b = make_app(queues={"default": 2}, node="b")
    operator = make_app()  # no queues: inserts and manages only
    await a.start()
    await b.start()
    await operator.pause_queue("default")
    await eventually(
        lambda: a.check_queue("default")["paused"] and b.check_queue("default")["paused"], timeout=1
    )
    await operator.insert_all([Scripted.new({}) for _ in range(4)])
    await asyncio.sleep(1.5)
    assert scripted.RUNS == []
    # a node that starts later (or restarts) comes up paused
    c = make_app(queues={"default": 2}, node="c")
    await c.start()
    assert c.check_queue("default")["paused"] is True
    await operator.resume_queue("default")
    await eventually(
        lambda: sql("SELECT count(*) FROM oban_jobs WHERE state = 'completed'")[0][0] == 4
    )


async def test_node_scoped_commands_and_check_all_queues(make_app: Any) -> None:
    a = make_app(queues={"default": 2, "media": 1}, node="a")
    b = make_app(queues={"default": 2}, node="b")
    await a.start()
    await b.start()
    await b.scale_queue("default", 5, node="a")
    await eventually(lambda: a.check_queue("default")["limit"] == 5, timeout=5)
    assert b.check_queue("default")["limit"] == 2
    await a.pause_queue("default", node="b")
    await eventually(lambda: b.check_queue("default")["paused"], timeout=5)
    assert not a.check_queue("default")["paused"]
    report = await make_app().check_all_queues()
    seen = {(r["node"], r["queue"]): (r["limit"], r["paused"], r["running"]) for r in report}
    assert seen == {
        ("a", "default"): (5, False, 0),
        ("a", "media"): (1, False, 0),
        ("b", "default"): (2, True, 0),
    }
    # a command for every node overrides the node-scoped one
    await a.resume_queue("default")
    await eventually(lambda: not b.check_queue("default")["paused"], timeout=5)


async def test_start_and_stop_queue_across_nodes(make_app: Any, sql: Any) -> None:
    a = make_app(queues={"default": 1}, node="a")
    b = make_app(queues={"default": 1}, node="b")
    await a.start()
    await b.start()
    await a.start_queue("extra", 3)
    await eventually(lambda: "extra" in a.producers and "extra" in b.producers, timeout=5)
    assert b.check_queue("extra")["limit"] == 3
    job = await a.insert(Scripted.new({}, queue="extra"))
    await eventually(
        lambda: sql("SELECT state FROM oban_jobs WHERE id = %s", (job.id,)) == [("completed",)]
    )
    await b.stop_queue("extra", node="a")
    await eventually(lambda: "extra" not in a.producers, timeout=5)
    assert "extra" in b.producers
    await b.stop_queue("default")
    await eventually(
        lambda: not a.producers.get("default") and not b.producers.get("default"), timeout=2
    )
    with pytest.raises(ConfigError, match="limit"):
        await a.start_queue("bad", 0)


async def test_an_elixir_signal_pauses_the_named_node_only(
    make_app: Any, dsn: str, prefix: str
) -> None:
    a = make_app(queues={"default": 1}, node="py-1")
    b = make_app(queues={"default": 1}, node="py-2")
    await a.start()
    await b.start()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_notify(%s, %s)",
            (f"{prefix}.oban_signal", '{"action":"pause","ident":"Oban.py-1","queue":"default"}'),
        )
    await eventually(lambda: a.check_queue("default")["paused"], timeout=5)
    await asyncio.sleep(0.2)
    assert not b.check_queue("default")["paused"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_notify(%s, %s)",
            (f"{prefix}.oban_signal", '{"action":"scale","ident":"any","queue":"*","limit":4}'),
        )
    await eventually(
        lambda: a.check_queue("default")["limit"] == 4 and b.check_queue("default")["limit"] == 4,
        timeout=1,
    )


_seen_cancelled = threading.Event()


@worker(queue="default")
def patient(job: Job) -> None:
    for _ in range(500):
        if job.cancelled():
            _seen_cancelled.set()
            return
        threading.Event().wait(0.01)


async def test_cancelling_a_sync_job_on_another_node(make_app: Any) -> None:
    runner = make_app(queues={"default": 1}, node="runner")
    await runner.start()
    job = await runner.insert(patient.new({}))
    await eventually(lambda: job.id in runner.check_queue("default")["running_ids"])
    await make_app().cancel_job(job.id)  # from another app, through the pkill signal
    await eventually(_seen_cancelled.is_set, timeout=3)
    await eventually(lambda: runner.check_queue("default")["running"] == 0)
    assert (await runner.get_job(job.id)).state is JobState.CANCELLED


async def test_pruner_deletes_old_finished_jobs_in_batches(make_app: Any, sql: Any) -> None:
    app = make_app(
        queues={"default": 1}, prune_max_age={"completed": 60, "discarded": 3600}, prune_limit=7
    )
    await app.migrate()
    await app.insert_all([Scripted.new({"n": i}) for i in range(30)])
    sql(
        "UPDATE oban_jobs SET state = 'completed', completed_at = now() - interval '2 min' "
        "WHERE (args->>'n')::int < 20"
    )
    sql(
        "UPDATE oban_jobs SET state = 'discarded', discarded_at = now() - interval '2 min' "
        "WHERE (args->>'n')::int BETWEEN 20 AND 24"
    )  # younger than an hour: kept
    sql(
        "UPDATE oban_jobs SET state = 'cancelled', cancelled_at = now() - interval '9 days' "
        "WHERE (args->>'n')::int >= 25"
    )  # cancelled has no max age here: kept
    await app.pause_queue("default")
    await app.start()
    pruned = await _service(app, Pruner).prune_once()
    assert pruned == {"completed": 20}
    assert sql("SELECT state::text, count(*) FROM oban_jobs GROUP BY 1 ORDER BY 1") == [
        ("cancelled", 5),
        ("discarded", 5),
    ]


async def test_bad_cluster_options_name_the_option() -> None:
    with pytest.raises(ConfigError, match="prune_max_age"):
        Kerrera("postgresql://x", prune_max_age={"finished": 1})
    with pytest.raises(ConfigError, match="leader_lease"):
        Kerrera("postgresql://x", leader_lease=0)
    with pytest.raises(ConfigError, match=r"reindex_schedule|cron expression"):
        Kerrera("postgresql://x", reindex_schedule="every day")
    with pytest.raises(ConfigError, match="crontab"):
        Kerrera("postgresql://x", crontab=[("* * * * *", "no.such.worker")])
    with pytest.raises(ConfigError, match="61"):
        Kerrera("postgresql://x", crontab=[("61 * * * *", Scripted)])
    with pytest.raises(ConfigError, match="share the name"):
        Kerrera("postgresql://x", crontab=[("* * * * *", Scripted), ("* * * * *", Scripted)])
    with pytest.raises(ConfigError, match="Mars"):
        Kerrera("postgresql://x", crontab=[("@daily", Scripted, {"timezone": "Mars/Base"})])


async def test_cron_inserts_each_owed_tick_once_even_from_two_leaders(
    make_app: Any, sql: Any
) -> None:
    crontab = [
        ("* * * * *", Scripted, {"args": {"do": "ok"}, "name": "every-minute"}),
        ("@reboot", Scripted, {"args": {"boot": True}}),
    ]
    a = make_app(node="a", crontab=crontab, cron_catch_up=600)
    b = make_app(node="b", crontab=crontab, cron_catch_up=600, leader=False)
    await a.start()
    await b.start()
    cron_a, cron_b = _service(a, Cron), _service(b, Cron)
    await eventually(lambda: sql("SELECT count(*) FROM oban_jobs WHERE args ? 'boot'")[0][0])
    # From here on only the explicit evaluations below may run: the services' own
    # minute-boundary evaluation would otherwise race them for the owed ticks.
    await cron_a.stop()
    await cron_b.stop()
    # pretend the last evaluation was 4 minutes ago (a restart, a leadership gap)
    sql(
        "UPDATE kerrera_cron SET last_tick = timezone('UTC', now()) - interval '4 minutes' "
        "+ interval '1 second'"
    )
    b._node.leadership._leading, b._node.leadership._valid_until = True, float("inf")  # split brain
    cron_b._rebooted = True  # b booted long ago: its @reboot is not owed
    results = await asyncio.gather(cron_a.evaluate_once(), cron_b.evaluate_once())
    inserted = results[0][0] + results[1][0]
    assert len(inserted) == 4
    ticks = sql(
        "SELECT meta->>'cron_tick' FROM oban_jobs WHERE meta->>'cron_name' = "
        "'every-minute' ORDER BY 1"
    )
    assert len(ticks) == 4 and len(set(ticks)) == 4
    meta = inserted[0].meta
    assert meta["cron"] is True and meta["cron_expr"] == "* * * * *"
    assert meta["cron_tz"] == "Etc/UTC"
    now = datetime.now(UTC).replace(second=0, microsecond=0, tzinfo=None)
    expected = {(now - timedelta(minutes=k)).strftime("%Y-%m-%dT%H:%M") for k in range(4)}
    assert {t for (t,) in ticks} == expected
    assert (await cron_a.evaluate_once())[0] == []  # nothing more is owed
    assert sql("SELECT count(*) FROM oban_jobs WHERE args ? 'boot'")[0][0] == 1


async def test_reindexer_rebuilds_and_drops_leftovers(make_app: Any, sql: Any, prefix: str) -> None:
    app = make_app(queues={"default": 1})
    await app.start()
    sql("CREATE INDEX oban_jobs_meta_index_ccnew ON oban_jobs (id)")
    sql(
        "UPDATE pg_index SET indisvalid = false WHERE indexrelid = %s::regclass",
        (f"{prefix}.oban_jobs_meta_index_ccnew",),
    )
    rebuilt = await _service(app, Reindexer).reindex_once()
    assert f"{prefix}.kerrera_jobs_unique_index" in rebuilt
    assert f"{prefix}.oban_jobs_args_index" in rebuilt
    assert not any("ccnew" in n for n in rebuilt)
    assert sql("SELECT to_regclass('oban_jobs_meta_index_ccnew')") == [(None,)]


async def test_the_sync_face_controls_queues_too(make_app: Any) -> None:
    node = make_app(queues={"default": 2}, node="a")
    await node.start()
    operator = make_app()
    await asyncio.to_thread(operator.sync.pause_queue, "default")
    await eventually(lambda: node.check_queue("default")["paused"], timeout=5)
    await asyncio.to_thread(operator.sync.scale_queue, "default", 7, node="a")
    await eventually(lambda: node.check_queue("default")["limit"] == 7, timeout=5)
    await asyncio.to_thread(operator.sync.resume_queue, "default")
    await eventually(lambda: not node.check_queue("default")["paused"], timeout=5)
    with pytest.raises(ConfigError, match="limit"):
        operator.sync.scale_queue("default", -1)
