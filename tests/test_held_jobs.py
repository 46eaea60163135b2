"""No job runs twice: what a producer holds (a lingering thread, a deferred or refused ack)
is never reclaimed or released while its run may still be going on, and a producer loop
that dies is restarted. Real database, real threads."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from acceptance.nodes import kill_node_connections
from conftest import eventually
from psycopg.conninfo import make_conninfo
from support import held

from kerrera import Job, Kerrera, telemetry
from kerrera.queue.ledger import Phase


@pytest.fixture(autouse=True)
def _reset_held() -> Iterator[None]:
    held.reset()
    yield
    held.reset()


def _state(sql: Callable[..., list[tuple[Any, ...]]], job_id: int) -> tuple[str, int]:
    rows = sql("SELECT state::text, attempt FROM oban_jobs WHERE id = %s", (job_id,))
    return rows[0][0], rows[0][1]


async def test_a_timed_out_sync_job_is_not_reclaimed_while_its_thread_runs(
    dsn: str, prefix: str, sql: Callable[..., list[tuple[Any, ...]]]
) -> None:
    # A cycle that fails (the connection blips) is followed by a reclaim of what this
    # producer claimed and does not hold. A sync job past its timeout, whose thread still
    # runs and whose retry waits for it, is held: it must not be put back and run again.
    name = f"held-{uuid.uuid4().hex[:10]}"
    app = Kerrera(
        make_conninfo(dsn, application_name=name), prefix=prefix,
        queues={"default": 3}, poll_interval=0.2, shutdown_grace_period=0.5,
    )  # fmt: skip
    async with app:
        job = await app.insert(held.stuck_past_timeout.new({"key": "a"}))
        producer = app.producers["default"]
        await eventually(lambda: producer.ledger.in_phase(Phase.LINGERING) == [job.id])
        assert _state(sql, job.id) == ("executing", 1)

        assert kill_node_connections(dsn, name)
        async with Kerrera(dsn, prefix=prefix) as client:  # on connections never killed
            probe = await client.insert(held.quick.new({}))
        # The producer's next cycle fails on its dead connection, then it recovers.
        await eventually(lambda: held.runs_of(probe.id) == [1], timeout=20)
        # The cycle after the failure reclaimed; the lingering job was left alone.
        assert held.runs_of(job.id) == [1]
        assert _state(sql, job.id) == ("executing", 1)

        held.gate("a").set()  # the thread ends: the timeout's retry is written now
        await eventually(lambda: _state(sql, job.id)[0] == "retryable")
        errors = sql("SELECT errors[1]->>'error' FROM oban_jobs WHERE id = %s", (job.id,))
        assert "timeout" in errors[0][0]
        assert held.runs_of(job.id) == [1]


async def test_stop_in_a_living_process_leaves_a_running_thread_s_job_executing(
    make_app: Callable[..., Kerrera], sql: Callable[..., list[tuple[Any, ...]]]
) -> None:
    # app.stop() where the process lives on (a web app's lifespan, a test): the thread
    # cannot be stopped, so releasing its job would let another node run it beside it.
    first = make_app(queues={"default": 2})
    await first.start()
    job = await first.insert(held.blocking.new({"key": "b"}))
    await eventually(lambda: held.runs_of(job.id) == [1])
    released = await first.stop(grace=0.2)
    assert released == 1  # its task was cancelled ...
    assert _state(sql, job.id) == ("executing", 1)  # ... but its row stays executing

    second = make_app(queues={"default": 2}, poll_interval=0.1)
    await second.start()
    probe = await second.insert(held.quick.new({}))
    await eventually(lambda: held.runs_of(probe.id) == [1])
    await asyncio.sleep(0.3)  # shows that nothing happens: the other node leaves it alone
    assert held.runs_of(job.id) == [1]
    assert _state(sql, job.id) == ("executing", 1)
    held.gate("b").set()


async def test_stop_before_the_process_exits_releases_a_running_thread_s_job(
    make_app: Callable[..., Kerrera], sql: Callable[..., list[tuple[Any, ...]]]
) -> None:
    app = make_app(queues={"default": 2})
    await app.start()
    job = await app.insert(held.blocking.new({"key": "c"}))
    await eventually(lambda: held.runs_of(job.id) == [1])
    assert await app.stop(grace=0.2, exiting=True) == 1
    assert _state(sql, job.id) == ("available", 1)  # the daemon thread dies with the process
    held.gate("c").set()


def refusing_trigger(
    sql: Callable[..., list[tuple[Any, ...]]], prefix: str
) -> Callable[[bool], None]:
    """A trigger that refuses (a plain error, not a lost connection) to complete jobs
    whose args say `"refuse": "yes"` while the switch it returns is on."""
    sql("CREATE TABLE refuse_switch (refusing boolean NOT NULL)")
    sql("INSERT INTO refuse_switch VALUES (true)")
    sql(
        """
        CREATE FUNCTION refuse_completion() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF NEW.state = 'completed' AND NEW.args ->> 'refuse' = 'yes'
             AND (SELECT refusing FROM "PREFIX".refuse_switch) THEN
            RAISE EXCEPTION 'completion refused by a trigger';
          END IF;
          RETURN NEW;
        END $$
        """.replace("PREFIX", prefix)  # (the node's connections do not search the test schema)
    )
    sql(
        "CREATE TRIGGER refuse_completion BEFORE UPDATE ON oban_jobs "
        "FOR EACH ROW EXECUTE FUNCTION refuse_completion()"
    )

    def switch(on: bool) -> None:
        sql("UPDATE refuse_switch SET refusing = %s", (on,))

    return switch


async def test_a_refused_completion_is_held_and_retried_never_run_again(
    make_app: Callable[..., Kerrera], sql: Callable[..., list[tuple[Any, ...]]], prefix: str
) -> None:
    app = make_app(queues={"default": 5}, poll_interval=0.1)
    await app.start()  # (the schema exists from here on)
    refusing = refusing_trigger(sql, prefix)
    refused = await app.insert(held.quick.new({"refuse": "yes"}))
    others = await app.insert_all([held.quick.new({"n": i}) for i in range(3)])
    producer = app.producers["default"]

    def retried_twice() -> bool:
        entries = [e for e in producer.ledger if e.job_id == refused.id]
        return bool(entries) and entries[0].refusals >= 2

    await eventually(retried_twice, timeout=20)
    for job in others:  # the refusal held none of the others back
        assert _state(sql, job.id)[0] == "completed"
    # Failed cycles are followed by reclaims: the refused job was never put back.
    assert producer.ledger.in_phase(Phase.ACK_REFUSED) == [refused.id]
    assert _state(sql, refused.id) == ("executing", 1)
    assert held.runs_of(refused.id) == [1]

    refusing(False)  # the cause is fixed: the held ack goes through
    await eventually(lambda: _state(sql, refused.id)[0] == "completed", timeout=20)
    assert held.runs_of(refused.id) == [1]
    await eventually(lambda: len(producer.ledger) == 0)


async def test_a_producer_loop_that_dies_is_restarted(
    make_app: Callable[..., Kerrera], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, Any]] = []
    telemetry.attach(
        "restart-test", ["producer.restart"], lambda _n, m, meta: seen.append({**m, **meta})
    )
    try:
        app = make_app(queues={"default": 2}, poll_interval=0.1)
        await app.start()
        producer = app.producers["default"]
        original = producer._demand
        failures = iter([RuntimeError("a bug in the loop")])

        def broken() -> int:
            for exc in failures:
                raise exc
            return original()

        monkeypatch.setattr(producer, "_demand", broken)
        producer.wake()
        await eventually(lambda: producer.restarts == 1)
        job = await app.insert(held.quick.new({}))
        await eventually(lambda: held.runs_of(job.id) == [1])
        assert seen and seen[0]["restarts"] == 1 and seen[0]["queue"] == "default"
        assert isinstance(seen[0]["error"], RuntimeError)
    finally:
        telemetry.detach("restart-test")


async def test_a_worker_module_is_imported_off_the_event_loop(
    make_app: Callable[..., Kerrera], sql: Callable[..., list[tuple[Any, ...]]]
) -> None:
    # The module's import blocks until the gate opens: were it imported on the loop, the
    # loop would hang and the quick job below could never run.
    app = make_app(queues={"default": 3}, poll_interval=0.1)
    await app.start()
    slow = await app.insert(Job(worker="support.import_gate.imported_late"))
    # Fetched, and its worker's import has begun (it blocks until the gate opens):
    await eventually(lambda: _state(sql, slow.id)[0] == "executing")
    quick = await app.insert(held.quick.new({}))
    await eventually(lambda: held.runs_of(quick.id) == [1])
    assert held.runs_of(slow.id) == []
    held.gate("import").set()
    await eventually(lambda: held.runs_of(slow.id) == [1])


async def test_a_failed_import_is_remembered_for_a_while(
    make_app: Callable[..., Kerrera], sql: Callable[..., list[tuple[Any, ...]]]
) -> None:
    app = make_app(queues={"default": 3}, poll_interval=0.1)
    await app.start()
    jobs = await app.insert_all(
        [Job(worker="support.import_fails.anything", max_attempts=1) for _ in range(4)]
    )
    for job in jobs:
        await eventually(lambda job=job: _state(sql, job.id)[0] == "discarded")
    errors = sql("SELECT errors[1]->>'error' FROM oban_jobs WHERE id = %s", (jobs[-1].id,))
    assert "cannot be imported" in errors[0][0]  # the remembered failure says why
    assert held.IMPORT_ATTEMPTS == ["import_fails"]  # one import tried, not four
