"""Workflows at their edges: later steps, retries by hand, cancels then retries, grafts
that fail after grafting, nested sub-workflows, pruning and deleting around waiting steps,
many small diamonds on two nodes, the caller's transaction, big contexts, the CLI on an
unknown id, a reused id, cascades of each shape, and the Mermaid chart of sub-workflows.
Real database; steps are moved by SQL where the test needs to control the order."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from typing import Any

import pytest
from conftest import eventually
from support import flow_edges, flows
from test_workflows import _flow_log, log, started, states  # noqa: F401 (_flow_log: autouse)

from kerrera import Kerrera
from kerrera.core.errors import KerreraError
from kerrera.core.workflow import Workflow

Sql = Callable[..., list[tuple[Any, ...]]]


def finish(sql: Sql, workflow_id: str, name: str, state: str = "completed") -> None:
    """End a step as its node's ack would (the trigger sees the same state change);
    `executing` starts it as a fetch would."""
    stamp = "attempted_at" if state == "executing" else f"{state}_at"
    sql(
        f"UPDATE oban_jobs SET state = %s, {stamp} = timezone('UTC', now()) "
        "WHERE meta->>'workflow_id' = %s AND meta->>'name' = %s",
        (state, workflow_id, name),
    )


def diamond_and_tail() -> Workflow:
    """a and b at once, c after both (the shape most retry tests need)."""
    wf = Workflow()
    wf.add("a", flows.step.new({}))
    wf.add("b", flows.step.new({}))
    wf.add("c", flows.step.new({}), deps=["a", "b"])
    return wf


# -- scheduling ------------------------------------------------------------------------------


async def test_a_later_step_is_released_to_scheduled_then_runs_at_its_time(
    make_app: Callable[..., Kerrera], sql: Sql
) -> None:
    app = make_app()  # nothing runs: the test finishes `a` itself
    wf = Workflow()
    wf.add("a", flows.step.new({}))
    wf.add("b", flows.step.new({}, schedule_in=2), deps=["a"])
    jobs = await app.insert(wf)
    assert [j.state.value for j in jobs] == ["available", "suspended"]
    finish(sql, wf.id, "a")
    rows = sql(
        "SELECT state::text, scheduled_at > timezone('UTC', now()) FROM oban_jobs WHERE id = %s",
        (jobs[1].id,),
    )
    assert rows == [("scheduled", True)]
    runner = make_app(queues={"flows": 2}, stage_interval=0.2)
    async with runner:
        status = await runner.workflow(wf.id).wait(timeout=20)
    assert status.states == {"completed": 2}
    ((ran_after_due,),) = sql(
        "SELECT attempted_at >= scheduled_at FROM oban_jobs WHERE id = %s", (jobs[1].id,)
    )
    assert ran_after_due


# -- retries by hand -------------------------------------------------------------------------


async def test_retrying_a_completed_dependency_does_not_count_it_twice(
    make_app: Callable[..., Kerrera], sql: Sql
) -> None:
    # An operator re-runs `a` (retry_job accepts completed jobs); when it completes
    # again, `c` must still wait for `b`, which has not run.
    app = make_app()
    wf = diamond_and_tail()
    a, _b, _c = await app.insert(wf)
    finish(sql, wf.id, "a")
    assert a.id is not None
    await app.retry_job(a.id)
    finish(sql, wf.id, "a")
    assert states(sql, wf.id)["c"] == "suspended"


async def test_retrying_an_ignored_discarded_dependency_does_not_release_early(
    make_app: Callable[..., Kerrera], sql: Sql
) -> None:
    # c runs even if a is discarded; a is discarded (counted once), then retried by hand
    # and completes (counted again): c must still wait for b.
    app = make_app()
    wf = Workflow()
    wf.add("a", flows.step.new({}))
    wf.add("b", flows.step.new({}))
    wf.add("c", flows.step.new({}), deps=["a", "b"], ignore_discarded=True)
    a, _b, _c = await app.insert(wf)
    finish(sql, wf.id, "a", "discarded")
    assert states(sql, wf.id)["c"] == "suspended"
    assert a.id is not None
    await app.retry_job(a.id)
    finish(sql, wf.id, "a")
    assert states(sql, wf.id)["c"] == "suspended"


async def test_a_bulk_retry_by_queue_leaves_waiting_steps_waiting(
    make_app: Callable[..., Kerrera], sql: Sql
) -> None:
    # `kerrera jobs retry --queue flows --state ...` / retry_jobs_where: an operator
    # retrying a queue must not run steps before their dependencies.
    app = make_app()
    wf = Workflow()
    wf.add("a", flows.step.new({}))
    wf.add("b", flows.step.new({}), deps=["a"])
    await app.insert(wf)
    await app.retry_jobs_where(queue="flows")
    assert states(sql, wf.id) == {"a": "available", "b": "suspended"}


async def test_retrying_a_discarded_dependency_by_hand_leaves_its_cancelled_dependents(
    make_app: Callable[..., Kerrera], sql: Sql
) -> None:
    # Plain retry_job is not a workflow retry: the dependents cancelled by the discard
    # stay cancelled (workflow(id).retry() is what re-runs them). Documents behaviour.
    app = make_app()
    wf = Workflow()
    wf.add("a", flows.step.new({}))
    wf.add("b", flows.step.new({}), deps=["a"])
    a, _b = await app.insert(wf)
    finish(sql, wf.id, "a", "discarded")
    assert a.id is not None
    await app.retry_job(a.id)
    finish(sql, wf.id, "a")
    assert states(sql, wf.id) == {"a": "completed", "b": "cancelled"}
    again = await app.workflow(wf.id).retry()
    assert len(again) == 1 and states(sql, wf.id)["b"] == "available"


async def test_a_workflow_retry_after_cancelling_all_of_it_runs_it_in_order(
    make_app: Callable[..., Kerrera], sql: Sql
) -> None:
    app = make_app()
    wf = Workflow()
    wf.add("a", flows.step.new({}))
    wf.add("b", flows.step.new({}), deps=["a"])
    wf.add("c", flows.step.new({}), deps=["b"])
    wf.add("d", flows.step.new({}), deps=["a"], ignore_cancelled=True)
    await app.insert(wf)
    cancelled = await app.workflow(wf.id).cancel()
    assert len(cancelled) == 4
    assert set(states(sql, wf.id).values()) == {"cancelled"}
    again = await app.workflow(wf.id).retry()
    assert len(again) == 4
    assert states(sql, wf.id) == {
        "a": "available", "b": "suspended", "c": "suspended", "d": "suspended"
    }  # fmt: skip
    assert sorted(r[0] for r in sql("SELECT pending FROM kerrera_workflow_waits")) == [1, 1, 1]
    runner = make_app(queues={"flows": 4})
    async with runner:
        status = await runner.workflow(wf.id).wait(timeout=20)
    assert status.states == {"completed": 4}
    order = started(sql)
    assert sorted(order) == ["a", "b", "c", "d"]
    assert order.index("a") < order.index("b") < order.index("c")
    assert order.index("a") < order.index("d")


# -- grafts ----------------------------------------------------------------------------------


async def test_a_graft_step_failing_after_grafting_grafts_once_and_holds_its_dependents(
    make_app: Callable[..., Kerrera], sql: Sql
) -> None:
    app = make_app(queues={"flows": 4}, stage_interval=0.2)
    wf = Workflow()
    wf.add_graft("g", flow_edges.GraftThenFail.new({"n": 3}))
    wf.add("after", flows.step.new({}), deps=["g"])
    async with app:
        await app.insert(wf)
        status = await app.workflow(wf.id).wait(timeout=20)
    assert status.states == {"completed": 5}
    assert sorted(states(sql, wf.id)) == ["after", "g", "g.0", "g.1", "g.2"]
    events = log(sql)
    assert events.count(("g", "start")) == 2 and events.count(("after", "start")) == 1
    before_after = events[: events.index(("after", "start"))]
    assert ("g", "end") in before_after
    assert all((f"g.{i}", "end") in before_after for i in range(3))


async def test_a_retried_graft_step_gets_back_the_jobs_it_grafted_first(
    make_app: Callable[..., Kerrera], sql: Sql
) -> None:
    # WorkflowStep.graft's docstring: "a retried graft step gets back the jobs it
    # grafted the first time".
    app = make_app(queues={"flows": 4}, stage_interval=0.2)
    wf = Workflow()
    wf.add_graft("g", flow_edges.GraftThenFail.new({"n": 2}))
    async with app:
        await app.insert(wf)
        await app.workflow(wf.id).wait(timeout=20)
    grafted = [event for name, event in log(sql) if name == "g" and event.startswith("grafted:")]
    assert len(grafted) == 2
    assert grafted[0] != "grafted:" and grafted[1] == grafted[0]


# -- shapes ----------------------------------------------------------------------------------


def nested() -> Workflow:
    inner = Workflow()
    inner.add("p", flows.step.new({"value": 1}))
    inner.add_many("g", [flows.step.new({"value": 2}), flows.step.new({"value": 3})], deps=["p"])
    inner.add_graft("gr", flows.grafter.new({"n": 2}), deps=["g"])
    mid = Workflow()
    mid.add("m", flows.step.new({"value": 0}))
    mid.add_workflow("in", inner, deps=["m"])
    wf = Workflow(name="nested")
    wf.add("start", flows.step.new({}))
    wf.add_workflow("mid", mid, deps=["start"])
    wf.add("after_g1", flows.step.new({}), deps=["mid.in.g.1"])
    wf.add("end", flows.reader.new({}), deps=["mid"])
    return wf


async def test_nested_sub_workflows_with_groups_grafts_and_member_deps(
    make_app: Callable[..., Kerrera], sql: Sql
) -> None:
    app = make_app(queues={"flows": 4})
    wf = nested()
    async with app:
        await app.insert(wf)
        status = await app.workflow(wf.id).wait(timeout=30)
        end = await app.workflow(wf.id).results(["end"])
    assert status.states == {"completed": 10}
    events = log(sql)

    def at(name: str, event: str) -> int:
        return events.index((name, event))

    assert at("start", "end") < at("mid.m", "start")
    assert at("mid.m", "end") < at("mid.in.p", "start")
    assert max(at("mid.in.g.0", "end"), at("mid.in.g.1", "end")) < at("mid.in.gr", "start")
    assert at("mid.in.g.1", "end") < at("after_g1", "start")
    ends = [at(n, "end") for n in ("mid.in.gr", "mid.in.gr.0", "mid.in.gr.1")]
    assert max(ends) < at("end", "start")
    assert set(end["end"]["results"]) == {
        "mid.m", "mid.in.p", "mid.in.g.0", "mid.in.g.1", "mid.in.gr.0", "mid.in.gr.1"
    }  # fmt: skip


def test_mermaid_draws_every_group_an_arrow_starts_from() -> None:
    # An arrow from `g_X` must start at a drawn subgraph `g_X`; otherwise Mermaid draws a
    # stray box named after the id. Groups inside sub-workflows, and nested subs.
    chart = nested().to_mermaid()
    sources = set(re.findall(r"^\s+(g\d+) -->", chart, re.M))
    drawn = set(re.findall(r"subgraph (g\d+)\[", chart))
    assert sources and sources <= drawn, (sources - drawn, chart)


def test_mermaid_keeps_groups_whose_names_differ_only_in_punctuation_apart() -> None:
    wf = Workflow()
    wf.add_many("a-b", [flows.step.new({})])
    wf.add_many("a_b", [flows.step.new({})])
    wf.add("x", flows.step.new({}), deps=["a-b"])
    wf.add("y", flows.step.new({}), deps=["a_b"])
    chart = wf.to_mermaid()
    drawn = re.findall(r"subgraph (g\d+)\[", chart)
    assert len(drawn) == len(set(drawn)) == 2, chart


# -- pruning and deleting --------------------------------------------------------------------


async def test_pruning_a_completed_dependency_keeps_its_dependent_waiting_then_released(
    make_app: Callable[..., Kerrera], sql: Sql
) -> None:
    app = make_app()
    wf = diamond_and_tail()
    await app.insert(wf)
    finish(sql, wf.id, "a")
    sql("UPDATE oban_jobs SET completed_at = completed_at - interval '1 hour'")
    pruner = make_app(prune_max_age=60, prune_interval=0.2, queues={"other": 1})
    async with pruner:
        await eventually(lambda: "a" not in states(sql, wf.id), timeout=15)
    assert states(sql, wf.id) == {"b": "available", "c": "suspended"}
    finish(sql, wf.id, "b")
    assert states(sql, wf.id)["c"] == "available"


async def test_a_workflow_whose_steps_are_all_pruned_is_pruned_too(
    make_app: Callable[..., Kerrera], sql: Sql
) -> None:
    # Otherwise kerrera_workflows (with each workflow's context) grows without end, and
    # `kerrera workflows list` shows workflows with no steps.
    app = make_app()
    wf = Workflow().put_context({"k": "v"}).add("a", flows.step.new({}))
    await app.insert(wf)
    finish(sql, wf.id, "a")
    sql("UPDATE oban_jobs SET completed_at = completed_at - interval '1 hour'")
    # (a workflow goes once it is older than the pruner's max age and has no step left)
    sql("UPDATE kerrera_workflows SET inserted_at = inserted_at - interval '1 hour'")
    pruner = make_app(prune_max_age=60, prune_interval=0.2, queues={"other": 1})
    async with pruner:
        await eventually(lambda: not states(sql, wf.id), timeout=15)
        await eventually(lambda: sql("SELECT id FROM kerrera_workflows") == [], timeout=15)


async def test_deleting_a_waiting_step_cancels_what_waits_on_it_and_leaves_no_rows(
    make_app: Callable[..., Kerrera], sql: Sql
) -> None:
    app = make_app()
    wf = Workflow()
    wf.add("a", flows.step.new({}))
    wf.add("b", flows.step.new({}), deps=["a"])
    wf.add("c", flows.step.new({}), deps=["b"])
    wf.add("d", flows.step.new({}), deps=["b"], ignore_deleted=True)
    _a, b, _c, _d = await app.insert(wf)
    assert b.id is not None
    deleted = await app.delete_job(b.id)
    assert deleted is not None
    assert states(sql, wf.id) == {"a": "available", "c": "cancelled", "d": "available"}
    assert sql("SELECT count(*) FROM kerrera_workflow_waits") == [(0,)]
    assert sql("SELECT count(*) FROM kerrera_workflow_edges WHERE job_id = %s", (b.id,)) == [(0,)]
    finish(sql, wf.id, "a")  # a's ack finds nobody left waiting on it
    assert states(sql, wf.id) == {"a": "completed", "c": "cancelled", "d": "available"}


# -- concurrency -----------------------------------------------------------------------------


async def test_many_small_diamonds_on_two_nodes_each_step_runs_once(
    make_app: Callable[..., Kerrera], sql: Sql
) -> None:
    # Acks are batched: one ack statement may finish deps of several dependents, and
    # two nodes' batches cross (node 1 finishes x1 and y2, node 2 x2 and y1).
    nodes = [make_app(queues={"flows": 8}, node=f"n{i}") for i in range(2)]
    wfs = []
    for _ in range(40):
        wf = Workflow()
        wf.add("top", flows.noop.new({}))
        wf.add("x", flows.noop.new({}), deps=["top"])
        wf.add("y", flows.noop.new({}), deps=["top"])
        wf.add("join", flows.noop.new({}), deps=["x", "y"])
        wfs.append(wf)
    async with nodes[0], nodes[1]:
        for wf in wfs:
            await nodes[0].insert(wf)
        for wf in wfs:
            status = await nodes[0].workflow(wf.id).wait(timeout=60)
            assert status.states == {"completed": 4}, status
    rows = sql("SELECT max(attempt), count(*), sum(cardinality(errors)) FROM oban_jobs")
    assert rows == [(1, 160, 0)]
    joins = sql(
        "SELECT j.attempted_at >= greatest(x.completed_at, y.completed_at) FROM oban_jobs j "
        "JOIN oban_jobs x ON x.meta->>'workflow_id' = j.meta->>'workflow_id' "
        "AND x.meta->>'name' = 'x' "
        "JOIN oban_jobs y ON y.meta->>'workflow_id' = j.meta->>'workflow_id' "
        "AND y.meta->>'name' = 'y' WHERE j.meta->>'name' = 'join'"
    )
    assert len(joins) == 40 and all(r[0] for r in joins)


# -- inserting -------------------------------------------------------------------------------


async def test_insert_all_on_the_callers_connection_appears_at_its_commit(
    make_app: Callable[..., Kerrera], dsn: str, prefix: str, sql: Sql
) -> None:
    import psycopg

    app = make_app(queues={"flows": 3})
    wf = Workflow()
    wf.add("a", flows.step.new({}))
    wf.add("b", flows.step.new({}), deps=["a"])
    async with app:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            await conn.execute(f'SET search_path TO "{prefix}"')
            jobs = await app.insert_all(wf, conn=conn)
            assert [j.state.value for j in jobs] == ["available", "suspended"]
            assert states(sql, wf.id) == {}
            assert sql("SELECT count(*) FROM kerrera_workflows") == [(0,)]
            await conn.commit()
        status = await app.workflow(wf.id).wait(timeout=20)
    assert status.states == {"completed": 2}
    assert started(sql) == ["a", "b"]


async def test_a_reused_workflow_id_fails_clearly_and_inserts_nothing(
    make_app: Callable[..., Kerrera], sql: Sql
) -> None:
    app = make_app()
    first = Workflow(workflow_id="nightly-2026-12-03").add("a", flows.step.new({}))
    await app.insert(first)
    again = Workflow(workflow_id="nightly-2026-12-03").add("z", flows.step.new({}))
    with pytest.raises(KerreraError, match="nightly-2026-12-03"):
        await app.insert(again)
    assert states(sql, "nightly-2026-12-03") == {"a": "available"}


async def test_a_big_context_is_stored_and_read_by_a_step(
    make_app: Callable[..., Kerrera], sql: Sql
) -> None:
    app = make_app(queues={"flows": 2})
    blob = "x" * 4_000_000 + "tail!"
    wf = Workflow().put_context({"blob": blob})
    wf.add("a", flows.step.new({}))
    wf.add("read", flow_edges.big_reader.new({}), deps=["a"])
    async with app:
        await app.insert(wf)
        await app.workflow(wf.id).wait(timeout=20)
        results = await app.workflow(wf.id).results(["read"])
    assert results == {"read": {"size": len(blob), "tail": "tail!"}}


# -- cascades and job.workflow ----------------------------------------------------------------


async def test_cascades_with_a_sync_function_and_with_one_parameter(
    make_app: Callable[..., Kerrera], sql: Sql
) -> None:
    app = make_app(queues={"flows": 3})
    wf = Workflow().put_context({"base": 10})
    wf.add_many("parts", [flows.step.new({"value": i}) for i in range(3)])
    wf.add_cascade("sum", flow_edges.sync_total, deps=["parts"], queue="flows")
    async with app:
        await app.insert(wf)
        await app.workflow(wf.id).wait(timeout=20)
        assert await app.workflow(wf.id).results(["sum"]) == {"sum": 13}


async def test_a_one_parameter_cascade_receives_context_and_results_in_one_dict(
    make_app: Callable[..., Kerrera], sql: Sql
) -> None:
    # call_cascade's docstring: "(context, results), one dict of both, or nothing".
    app = make_app(queues={"flows": 3})
    wf = Workflow().put_context({"base": 10})
    wf.add("part", flows.step.new({"value": 1}))
    wf.add_cascade("keys", flow_edges.only_context, deps=["part"], queue="flows")
    async with app:
        await app.insert(wf)
        await app.workflow(wf.id).wait(timeout=20)
        assert await app.workflow(wf.id).results(["keys"]) == {"keys": ["base", "part"]}


async def test_job_workflow_is_none_outside_a_workflow(
    make_app: Callable[..., Kerrera], sql: Sql
) -> None:
    app = make_app(queues={"flows": 1})
    async with app:
        job = await app.insert(flow_edges.where_am_i.new({}))
        await eventually(lambda: sql("SELECT state::text FROM oban_jobs") == [("completed",)])
    assert job.workflow is None
    assert sql("SELECT meta->'return' FROM oban_jobs") == [({"workflow": None},)]


# -- the CLI ---------------------------------------------------------------------------------


async def test_the_cli_shows_an_unknown_workflow_as_a_clear_error(
    make_app: Callable[..., Kerrera], dsn: str, prefix: str
) -> None:
    import subprocess
    import sys
    from pathlib import Path

    make_app()  # (the schema is migrated by the first app's insert or start)
    app = make_app()
    await app.insert(flows.step.new({}))
    kerrera = str(Path(sys.executable).parent / "kerrera")
    done = await asyncio.to_thread(
        subprocess.run,
        [kerrera, "workflows", "show", "no-such-flow", "--dsn", dsn, "--prefix", prefix],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "no-such-flow" in done.stderr and "Traceback" not in done.stderr


# -- workflow retries racing and after pruning -------------------------------------------------


async def test_a_workflow_retry_racing_a_dependency_ack_does_not_strand_its_dependent(
    make_app: Callable[..., Kerrera], dsn: str, prefix: str, sql: Sql
) -> None:
    # d waits on a and x. a is discarded (d is cancelled) while x runs. The operator
    # retries the workflow just as x's ack commits: the retry read x as unfinished and
    # counts it, but x's ack found no counter row for d to count down. Once a completes
    # again, d must run (not wait forever for x).
    import psycopg

    app = make_app()
    wf = Workflow()
    wf.add("a", flows.step.new({}))
    wf.add("x", flows.step.new({}))
    wf.add("d", flows.step.new({}), deps=["a", "x"])
    await app.insert(wf)
    finish(sql, wf.id, "x", "executing")
    finish(sql, wf.id, "a", "discarded")
    assert states(sql, wf.id)["d"] == "cancelled"
    ack = psycopg.connect(dsn)
    try:
        ack.execute(f'SET search_path TO "{prefix}"')
        ack.execute(
            "UPDATE oban_jobs SET state = 'completed', completed_at = timezone('UTC', now()) "
            "WHERE meta->>'workflow_id' = %s AND meta->>'name' = 'x'",
            (wf.id,),
        )
        retry = asyncio.create_task(app.workflow(wf.id).retry())

        def retried_or_blocked() -> bool:
            blocked = sql(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"
            )
            return retry.done() or bool(blocked[0][0])

        await eventually(retried_or_blocked)
        ack.commit()  # x's ack commits (a fixed retry may have waited for it)
    finally:
        ack.close()
    await asyncio.wait_for(retry, 10)
    finish(sql, wf.id, "a")
    assert states(sql, wf.id) == {"a": "completed", "x": "completed", "d": "available"}


async def test_a_workflow_retry_does_not_run_a_step_whose_failed_dependency_was_pruned(
    make_app: Callable[..., Kerrera], sql: Sql
) -> None:
    # Per-state prune ages (prune_max_age={"discarded": ...}) may remove a discarded
    # step before the steps it cancelled. A retry must not then run those as if their
    # dependency had completed: refuse, or leave them cancelled.
    app = make_app()
    wf = Workflow()
    wf.add("a", flows.step.new({}))
    wf.add("b", flows.step.new({}), deps=["a"])
    a, _b = await app.insert(wf)
    finish(sql, wf.id, "a", "discarded")
    sql("DELETE FROM oban_jobs WHERE id = %s", (a.id,))  # what the pruner does
    assert states(sql, wf.id) == {"b": "cancelled"}
    with contextlib.suppress(KerreraError):
        await app.workflow(wf.id).retry()
    assert states(sql, wf.id) == {"b": "cancelled"}


async def test_sync_insert_on_the_callers_connection_commits_with_it(
    make_app: Callable[..., Kerrera], dsn: str, prefix: str, sql: Sql
) -> None:
    import psycopg

    app = make_app()

    def insert_and_commit(commit: bool) -> list[Any]:
        with psycopg.connect(dsn) as conn:
            conn.execute(f'SET search_path TO "{prefix}"')
            wf = Workflow().add("a", flows.step.new({})).add("b", flows.step.new({}), deps=["a"])
            app.sync.insert(wf, conn=conn)
            (conn.commit if commit else conn.rollback)()
            return [wf.id]

    (kept,) = await asyncio.to_thread(insert_and_commit, True)
    (dropped,) = await asyncio.to_thread(insert_and_commit, False)
    assert states(sql, kept) == {"a": "available", "b": "suspended"}
    assert states(sql, dropped) == {}
    assert sql("SELECT id FROM kerrera_workflows") == [(kept,)]


async def test_released_grafted_and_retried_steps_are_noticed_without_polling(
    make_app: Callable[..., Kerrera], sql: Sql
) -> None:
    # With the poll a minute away, only the notifications of the release trigger, the
    # graft and the retry can start the next steps within the test's time.
    app = make_app(queues={"flows": 3}, poll_interval=60)
    wf = Workflow()
    wf.add("a", flows.step.new({}))
    wf.add("b", flows.step.new({}), deps=["a"])
    wf.add_graft("g", flows.grafter.new({"n": 2}), deps=["b"])
    wf.add("c", flows.step.new({"discard": True}, max_attempts=1), deps=["g"])
    async with app:
        # a first job run shows the producer past its first fetch, waiting for a wake-up
        await app.wait(await app.insert(flows.noop.new({})), timeout=15)
        await app.insert(wf)
        first = await app.workflow(wf.id).wait(timeout=15)
        assert first.states == {"completed": 5, "discarded": 1}
        await app.workflow(wf.id).retry(args={"c": {}})
        again = await app.workflow(wf.id).wait(timeout=15)
    assert again.states == {"completed": 6}


async def test_a_workflow_retry_refuses_args_for_a_step_it_does_not_run(
    make_app: Callable[..., Kerrera], sql: Sql
) -> None:
    # New args for a completed step would be dropped without a word.
    app = make_app()
    wf = Workflow()
    wf.add("ok", flows.step.new({}))
    wf.add("bad", flows.step.new({}), deps=["ok"])
    await app.insert(wf)
    finish(sql, wf.id, "ok")
    finish(sql, wf.id, "bad", "discarded")
    with pytest.raises(KerreraError, match="ok"):
        await app.workflow(wf.id).retry(args={"ok": {"x": 1}})
