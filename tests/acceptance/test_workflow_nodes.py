"""A workflow across three real node processes, one of which is killed with SIGKILL in
the middle: nothing is lost and no step is released twice."""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from acceptance.nodes import Node, until

from kerrera import Kerrera
from kerrera.core.workflow import Workflow

FAST_LIFELINE = ("--heartbeat-interval", "0.2", "--producer-ttl", "2", "--rescue-interval", "0.2")
Sql = Callable[..., list[tuple[Any, ...]]]


def test_kill_9_in_the_middle_of_a_workflow_loses_nothing_and_releases_nothing_twice(
    run: Callable[..., Node], client: Kerrera, sql: Sql, dsn: str, prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from support import flows

    sql(f'CREATE SCHEMA IF NOT EXISTS "{prefix}"')
    sql(f'CREATE TABLE "{prefix}".flow_log (n bigserial, job_id bigint, name text, event text, '
        "at timestamp DEFAULT clock_timestamp())")  # fmt: skip
    monkeypatch.setenv("KERRERA_FLOWS_DSN", dsn)
    monkeypatch.setenv("KERRERA_FLOWS_PREFIX", prefix)
    nodes = {}
    for name in ("n1", "n2", "n3"):
        nodes[name] = run(
            "start", "--queues", "flows:3", "--module", "support.flows", "--node", name,
            "--shutdown-grace-period", "1", *FAST_LIFELINE,
        )  # fmt: skip
    for node in nodes.values():
        node.wait_for("running queues")

    wf = Workflow(name="pipeline")
    wf.add("download", flows.step.new({"sleep": 0.2}))
    wf.add_many("stems", [flows.step.new({"sleep": 0.4, "value": i}) for i in range(24)],
                deps=["download"])  # fmt: skip
    wf.add("mix", flows.step.new({"sleep": 0.1}), deps=["stems"])
    wf.add_many("analyse", [flows.step.new({"sleep": 0.3}) for _ in range(9)], deps=["mix"])
    wf.add("report", flows.reader.new({}), deps=["analyse", "stems"])
    client.sync.insert(wf)

    def on_n2() -> int:
        return int(sql(
            "SELECT count(*) FROM oban_jobs WHERE meta->>'workflow_id' = %s "
            "AND state = 'executing' AND attempted_by[1] = 'n2'", (wf.id,),
        )[0][0])  # fmt: skip

    until(lambda: on_n2() >= 2, timeout=30)
    nodes["n2"].proc.send_signal(signal.SIGKILL)
    nodes["n2"].wait(timeout=10)

    def finished() -> bool:
        left = sql(
            "SELECT count(*) FROM oban_jobs WHERE meta->>'workflow_id' = %s "
            "AND state NOT IN ('completed', 'cancelled', 'discarded')", (wf.id,),
        )  # fmt: skip
        return left[0][0] == 0

    until(finished, timeout=90)
    rows = sql(
        "SELECT meta->>'name', state::text FROM oban_jobs WHERE meta->>'workflow_id' = %s",
        (wf.id,),
    )
    assert len(rows) == 36 and {state for _n, state in rows} == {"completed"}
    events = sql("SELECT name, event FROM flow_log ORDER BY n")
    ends = Counter(name for name, event in events if event == "end")
    assert set(ends.values()) == {1} and len(ends) == 36
    starts = Counter(name for name, event in events if event == "start")
    # every step succeeds on its first run: a second run is one the kill interrupted
    rescued = sql(
        "SELECT count(*) FROM oban_jobs WHERE meta->>'workflow_id' = %s AND attempt > 1",
        (wf.id,),
    )[0][0]
    assert rescued >= 1, "the kill should have interrupted some steps"
    # the dependents started only after every dependency ended, once each
    position = {(name, event): i for i, (name, event) in enumerate(events)}
    first_start = {}
    for i, (name, event) in enumerate(events):
        if event == "start":
            first_start.setdefault(name, i)
    assert first_start["mix"] > max(position[(f"stems.{i}", "end")] for i in range(24))
    assert first_start["report"] > max(position[(f"analyse.{i}", "end")] for i in range(9))
    # interrupted steps ran again, but no dependent was released twice
    assert starts["report"] == 1
