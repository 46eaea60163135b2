"""Workflows: steps released by the ack of their last dependency (a trigger, in the same
transaction), failures that cancel what depends on them, grafts, cascades, context,
retries, and concurrency. Real database, real nodes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import eventually
from support import flows

from kerrera import Kerrera
from kerrera.core.errors import ConfigError
from kerrera.core.workflow import Workflow

Sql = Callable[..., list[tuple[Any, ...]]]


@pytest.fixture(autouse=True)
def _flow_log(dsn: str, prefix: str, monkeypatch: pytest.MonkeyPatch, sql: Sql) -> Iterator[None]:
    sql(f'CREATE SCHEMA IF NOT EXISTS "{prefix}"')
    sql(
        f'CREATE TABLE IF NOT EXISTS "{prefix}".flow_log (n bigserial, job_id bigint, '
        "name text, event text, at timestamp DEFAULT clock_timestamp())"
    )
    monkeypatch.setenv("KERRERA_FLOWS_DSN", dsn)
    monkeypatch.setenv("KERRERA_FLOWS_PREFIX", prefix)
    yield


def log(sql: Sql) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in sql("SELECT name, event FROM flow_log ORDER BY n")]


def states(sql: Sql, workflow_id: str) -> dict[str, str]:
    rows = sql(
        "SELECT meta->>'name', state::text FROM oban_jobs WHERE meta->>'workflow_id' = %s",
        (workflow_id,),
    )
    return dict((r[0], r[1]) for r in rows)


def started(sql: Sql) -> list[str]:
    return [name for name, event in log(sql) if event == "start"]


# -- building -------------------------------------------------------------------------------


def test_building_refuses_unknown_self_and_duplicate_names() -> None:
    wf = Workflow(name="w").add("a", flows.step.new({}))
    with pytest.raises(ConfigError, match="not defined"):
        wf.add("b", flows.step.new({}), deps=["nope"])
    with pytest.raises(ConfigError, match="itself"):
        wf.add("c", flows.step.new({}), deps=["c"])
    with pytest.raises(ConfigError, match="already defined"):
        wf.add("a", flows.step.new({}))
    with pytest.raises(ConfigError, match="no dots"):
        wf.add("x.y", flows.step.new({}))
    with pytest.raises(ConfigError, match="module-level"):
        wf.add_cascade("l", lambda c, r: 1)
    # a dependency must exist when its dependent is added: no cycle can ever be built
    assert [s.name for s in wf.steps] == ["a"]


def test_plan_counts_dependency_jobs_and_mermaid_draws_groups() -> None:
    wf = Workflow(name="media")
    wf.add("download", flows.step.new({}))
    wf.add_many("stems", [flows.step.new({"i": i}) for i in range(4)], deps=["download"])
    wf.add("analyse", flows.step.new({}), deps=["stems", "download"])
    plan = wf.plan()
    by_name = {j.meta["name"]: (j, p) for j, p in zip(plan.jobs, plan.pending, strict=True)}
    assert by_name["download"][1] == 0
    assert by_name["stems.2"][1] == 1
    assert by_name["analyse"][1] == 5
    assert by_name["stems.2"][0].meta["announces"] == ["stems.2", "stems"]
    assert by_name["analyse"][0].meta["deps"] == ["stems", "download"]
    chart = wf.to_mermaid()
    assert chart.startswith("flowchart TD")
    assert 'subgraph g0["stems"]' in chart
    assert "g0 --> s5" in chart


# -- running --------------------------------------------------------------------------------


async def test_a_diamond_runs_in_dependency_order(
    make_app: Callable[..., Kerrera], sql: Sql
) -> None:
    app = make_app(queues={"flows": 5})
    wf = Workflow(name="diamond")
    wf.add("a", flows.step.new({"value": 1}))
    wf.add("b", flows.step.new({"value": 2}), deps=["a"])
    wf.add("c", flows.step.new({"value": 3, "snooze_first": True}), deps=["a"])
    wf.add("d", flows.step.new({"value": 4, "fail_until": 1}), deps=["b", "c"])
    async with app:
        jobs = await app.insert(wf)
        assert [j.state.value for j in jobs] == ["available", "suspended", "suspended", "suspended"]
        status = await app.workflow(wf.id).wait(timeout=30)
    assert status.state == "completed" and status.total == 4
    assert status.duration is not None and status.duration >= 0
    order = started(sql)
    assert order[0] == "a"
    assert order.index("d") > max(order.index("b"), order.index("c"))
    # c snoozed once and d failed once: d started only after c's second run ended
    events = log(sql)
    assert events.index(("c", "end")) < events.index(("d", "start"))
    assert order.count("d") == 2 and order.count("a") == 1


async def test_fan_out_fan_in_and_results(make_app: Callable[..., Kerrera], sql: Sql) -> None:
    app = make_app(queues={"flows": 10})
    wf = Workflow(name="fan").put_context({"base": 100})
    wf.add("seed", flows.step.new({"value": 0}))
    wf.add_many("parts", [flows.step.new({"value": i}) for i in range(20)], deps=["seed"])
    wf.add("read", flows.reader.new({}), deps=["parts"])
    wf.add_cascade("sum", flows.total, deps=["parts"], queue="flows")
    async with app:
        await app.insert(wf)
        await app.workflow(wf.id).wait(timeout=60)
        jobs = {j.meta["name"]: j for j in await app.workflow(wf.id).jobs()}
        assert await app.workflow(wf.id).results(["sum"]) == {"sum": 100 + sum(range(20))}
        deps = await app.workflow(wf.id).jobs(only_deps="read")
    read = jobs["read"].meta["return"]
    assert read["context"] == {"base": 100}
    assert read["results"] == {f"parts.{i}": i for i in range(20)}
    assert len(deps) == 20
    assert all(j.state.value == "completed" for j in jobs.values())


async def test_a_failed_dependency_cancels_what_follows_unless_ignored(
    make_app: Callable[..., Kerrera], sql: Sql
) -> None:
    app = make_app(queues={"flows": 5})
    wf = Workflow(name="fails")
    wf.add("bad", flows.step.new({"discard": True}))
    wf.add("next", flows.step.new({}), deps=["bad"])
    wf.add("after_next", flows.step.new({}), deps=["next"])
    wf.add("anyway", flows.step.new({}), deps=["bad"], ignore_discarded=True)
    wf.add("gone", flows.step.new({"cancel": True}))
    wf.add("after_gone", flows.step.new({}), deps=["gone"])
    wf.add("after_gone_ok", flows.step.new({}), deps=["gone"], ignore_cancelled=True)
    wf.steps[0].job.max_attempts = 1
    async with app:
        await app.insert(wf)
        status = await app.workflow(wf.id).wait(timeout=30)
    s = states(sql, wf.id)
    assert s == {
        "bad": "discarded", "next": "cancelled", "after_next": "cancelled",
        "anyway": "completed", "gone": "cancelled", "after_gone": "cancelled",
        "after_gone_ok": "completed",
    }  # fmt: skip
    assert status.state == "discarded"
    assert "next" not in started(sql) and "after_next" not in started(sql)
    errors = sql(
        "SELECT errors[1]->>'error' FROM oban_jobs WHERE meta->>'name' = 'next' "
        "AND meta->>'workflow_id' = %s", (wf.id,),
    )  # fmt: skip
    assert "dependency bad" in errors[0][0] and "discarded" in errors[0][0]


async def test_deleting_an_unfinished_dependency_cancels_its_dependents(
    make_app: Callable[..., Kerrera], sql: Sql
) -> None:
    app = make_app()  # no queue runs "flows": steps stay where they are
    wf = Workflow()
    wf.add("a", flows.step.new({}))
    wf.add("b", flows.step.new({}), deps=["a"])
    wf.add("c", flows.step.new({}), deps=["a"], ignore_deleted=True)
    jobs = await app.insert(wf)
    await app.delete_job(jobs[0].id)
    s = states(sql, wf.id)
    assert s == {"b": "cancelled", "c": "available"}


async def test_cancel_and_retry_a_workflow(make_app: Callable[..., Kerrera], sql: Sql) -> None:
    app = make_app(queues={"flows": 5})
    wf = Workflow(name="retry")
    wf.add("ok", flows.step.new({"value": 1}))
    wf.add("bad", flows.step.new({"discard": True}), deps=["ok"])
    wf.add("end", flows.step.new({"value": 3}), deps=["bad"])
    wf.steps[1].job.max_attempts = 1
    async with app:
        await app.insert(wf)
        first = await app.workflow(wf.id).wait(timeout=30)
        assert first.state == "discarded"
        assert states(sql, wf.id) == {"ok": "completed", "bad": "discarded", "end": "cancelled"}
        again = await app.workflow(wf.id).retry(args={"bad": {"value": 2}})
        assert len(again) == 2
        done = await app.workflow(wf.id).wait(timeout=30)
    assert done.state == "completed"
    assert started(sql).count("ok") == 1
    assert await app.workflow(wf.id).results(["bad", "end"]) == {"bad": 2, "end": 3}


async def test_cancel_stops_waiting_and_running_steps(
    make_app: Callable[..., Kerrera], sql: Sql
) -> None:
    app = make_app(queues={"flows": 5})
    wf = Workflow()
    wf.add("slow", flows.step.new({"sleep": 30}))
    wf.add("later", flows.step.new({}), deps=["slow"])
    async with app:
        await app.insert(wf)
        await eventually(lambda: "slow" in started(sql))
        cancelled = await app.workflow(wf.id).cancel()
        assert {j.meta["name"] for j in cancelled} == {"slow", "later"}
        status = await app.workflow(wf.id).wait(timeout=10)
    assert status.states == {"cancelled": 2}


async def test_graft_adds_steps_that_dependents_wait_for(
    make_app: Callable[..., Kerrera], sql: Sql
) -> None:
    app = make_app(queues={"flows": 5})
    wf = Workflow(name="graft")
    wf.add_graft("expand", flows.grafter.new({"n": 5}))
    wf.add("read", flows.reader.new({}), deps=["expand"])
    async with app:
        await app.insert(wf)
        await app.workflow(wf.id).wait(timeout=30)
        jobs = await app.workflow(wf.id).jobs()
    names = sorted(j.meta["name"] for j in jobs)
    assert names == sorted(["expand", "read", *(f"expand.{i}" for i in range(5))])
    read = next(j for j in jobs if j.meta["name"] == "read")
    assert read.meta["return"]["results"] == {f"expand.{i}": i for i in range(5)}
    events = log(sql)
    grafted_ends = [i for i, e in enumerate(events) if e[0].startswith("expand.") and e[1] == "end"]
    assert max(grafted_ends) < events.index(("read", "end"))


async def test_sub_workflows_and_the_callers_transaction(
    make_app: Callable[..., Kerrera], dsn: str, prefix: str, sql: Sql
) -> None:
    import psycopg

    app = make_app(queues={"flows": 5})
    sub = Workflow().add("x", flows.step.new({"value": 1}))
    sub.add("y", flows.step.new({"value": 2}), deps=["x"])
    wf = Workflow(name="outer")
    wf.add("first", flows.step.new({}))
    wf.add_workflow("inner", sub, deps=["first"])
    wf.add("last", flows.reader.new({}), deps=["inner"])
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute(f'SET search_path TO "{prefix}"')
        await app.insert(wf, conn=conn)
        await conn.rollback()  # the caller's transaction decides: nothing is left
    assert states(sql, wf.id) == {}
    async with app:
        await app.insert(wf)
        await app.workflow(wf.id).wait(timeout=30)
    order = started(sql)
    assert order == ["first", "inner.x", "inner.y", "last"]
    last = sql(
        "SELECT meta->'return'->'results' FROM oban_jobs WHERE meta->>'name' = 'last' "
        "AND meta->>'workflow_id' = %s", (wf.id,),
    )  # fmt: skip
    assert last[0][0] == {"inner.x": 1, "inner.y": 2}


async def test_the_last_two_dependencies_acked_concurrently_release_once(
    make_app: Callable[..., Kerrera], sql: Sql
) -> None:
    # Many rounds of two dependencies finishing at the same moment on two nodes: the
    # dependent is released exactly once each time (its counter row serialises them).
    nodes = [make_app(queues={"flows": 4}, node=f"n{i}") for i in range(2)]
    flows_ids = []
    for _round in range(15):
        wf = Workflow()
        wf.add("l", flows.step.new({"sleep": 0.05}))
        wf.add("r", flows.step.new({"sleep": 0.05}))
        wf.add("join", flows.step.new({}), deps=["l", "r"])
        flows_ids.append(wf)
    async with nodes[0], nodes[1]:
        for wf in flows_ids:
            await nodes[0].insert(wf)
        for wf in flows_ids:
            await nodes[0].workflow(wf.id).wait(timeout=60)
    assert started(sql).count("join") == 15
    assert started(sql).count("l") == 15


async def test_sync_insert_of_a_workflow(make_app: Callable[..., Kerrera], sql: Sql) -> None:
    app = make_app(queues={"flows": 2})
    wf = Workflow().add("a", flows.step.new({})).add("b", flows.step.new({}), deps=["a"])
    jobs = await asyncio.to_thread(app.sync.insert, wf)
    assert [j.state.value for j in jobs] == ["available", "suspended"]
    async with app:
        await app.workflow(wf.id).wait(timeout=30)
    assert started(sql) == ["a", "b"]


async def test_a_ten_thousand_step_fan_out_and_fan_in(
    make_app: Callable[..., Kerrera], sql: Sql
) -> None:
    app = make_app(queues={"flows": 50})
    wf = Workflow(name="wide")
    wf.add("start", flows.noop.new({}))
    wf.add_many("wide", [flows.noop.new({"i": i}) for i in range(10_000)], deps=["start"])
    wf.add("join", flows.noop.new({}), deps=["wide"])
    async with app:
        jobs = await app.insert(wf)
        assert len(jobs) == 10_002
        status = await app.workflow(wf.id).wait(timeout=240)
    assert status.states == {"completed": 10_002}
    (join_started, join_attempt), = sql(
        "SELECT attempted_at, attempt FROM oban_jobs WHERE meta->>'workflow_id' = %s "
        "AND meta->>'name' = 'join'", (wf.id,),
    )  # fmt: skip
    (last_member,) = sql(
        "SELECT max(completed_at) FROM oban_jobs WHERE meta->>'workflow_id' = %s "
        "AND meta->'announces' ? 'wide'", (wf.id,),
    )[0]  # fmt: skip
    assert join_attempt == 1 and join_started >= last_member
    # nothing is left waiting: every counter row was used up and removed
    assert sql("SELECT count(*) FROM kerrera_workflow_waits")[0][0] == 0


async def test_the_cli_lists_and_shows_workflows(
    make_app: Callable[..., Kerrera], dsn: str, prefix: str
) -> None:
    import json
    import subprocess
    import sys
    from pathlib import Path

    app = make_app()
    wf = Workflow(name="shown")
    wf.add("fetch", flows.step.new({}))
    wf.add("store", flows.step.new({}), deps=["fetch"])
    await app.insert(wf)
    kerrera = str(Path(sys.executable).parent / "kerrera")
    common = ["--dsn", dsn, "--prefix", prefix]

    def cli(*args: str) -> str:
        done = subprocess.run(
            [kerrera, "workflows", *args, *common], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    listed = await asyncio.to_thread(cli, "list")
    assert wf.id[:8] in listed and "shown" in listed and "running" in listed
    assert "1 available, 1 suspended" in listed
    shown = await asyncio.to_thread(cli, "show", wf.id)
    assert "fetch" in shown and "store" in shown and "suspended" in shown
    data = json.loads(await asyncio.to_thread(cli, "show", wf.id, "--json"))
    assert [s["name"] for s in data["steps"]] == ["fetch", "store"]
    assert data["steps"][1]["deps"] == ["fetch"] and data["state"] == "executing"
    chart = await asyncio.to_thread(cli, "show", wf.id, "--mermaid")
    assert chart.startswith("flowchart TD") and "-->" in chart


async def test_a_sync_worker_reads_context_and_results(
    make_app: Callable[..., Kerrera], sql: Sql
) -> None:
    app = make_app(queues={"flows": 3})
    wf = Workflow().put_context({"k": "v"})
    wf.add("a", flows.step.new({"value": 7}))
    wf.add("b", flows.sync_reader.new({}), deps=["a"])
    async with app:
        await app.insert(wf)
        await app.workflow(wf.id).wait(timeout=30)
        assert await app.workflow(wf.id).results(["b"]) == {
            "b": {"context": {"k": "v"}, "results": {"a": 7}}
        }


async def test_two_transactions_finishing_the_last_two_dependencies_release_once(
    make_app: Callable[..., Kerrera], dsn: str, prefix: str, sql: Sql
) -> None:
    # Deterministic: the first transaction finishes `l` and holds the join's counter row;
    # the second finishes `r` and must wait for it, then see the count the first left.
    import threading

    import psycopg

    app = make_app()  # no queue runs the steps: the test moves them itself
    wf = Workflow()
    wf.add("l", flows.step.new({}))
    wf.add("r", flows.step.new({}))
    wf.add("join", flows.step.new({}), deps=["l", "r"])
    left, right, join = (j.id for j in await app.insert(wf))
    sql("UPDATE oban_jobs SET state = 'executing', attempt = 1 WHERE id IN (%s, %s)", (left, right))

    first = psycopg.connect(dsn)
    first.execute(f'SET search_path TO "{prefix}"')
    first.execute("UPDATE oban_jobs SET state = 'completed' WHERE id = %s", (left,))
    done = threading.Event()

    def second() -> None:
        with psycopg.connect(dsn) as conn:
            conn.execute(f'SET search_path TO "{prefix}"')
            conn.execute("UPDATE oban_jobs SET state = 'completed' WHERE id = %s", (right,))
            conn.commit()
        done.set()

    thread = threading.Thread(target=second)
    thread.start()

    def second_waits_on_a_lock() -> bool:
        rows = sql(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE 'UPDATE oban_jobs SET state = %%'"
        )
        return bool(rows[0][0])

    await eventually(second_waits_on_a_lock)
    assert sql("SELECT state::text FROM oban_jobs WHERE id = %s", (join,)) == [("suspended",)]
    first.commit()
    first.close()
    await asyncio.to_thread(thread.join, 10)
    assert done.is_set()
    assert sql("SELECT state::text FROM oban_jobs WHERE id = %s", (join,)) == [("available",)]
    assert sql("SELECT count(*) FROM kerrera_workflow_waits") == [(0,)]
