"""Whatever a worker or a row does, the job ends with an outcome and the queue goes on."""

from __future__ import annotations

from typing import Any

import psycopg
from conftest import eventually
from support import scripted
from support.scripted import Misbehaving, NeedsArgs, Scripted, slow_sync, stop_iteration

from kerrera import JobState

FINISHED = ("completed", "retryable", "discarded", "cancelled")


async def _all_finished(sql: Any, n: int) -> bool:
    return bool(
        sql("SELECT count(*) = %s FROM oban_jobs WHERE state::text = ANY(%s)", (n, list(FINISHED)))[
            0
        ][0]
    )


async def test_jobs_that_break_the_executor_still_end(make_app: Any, sql: Any) -> None:
    app = make_app(queues={"default": 5}, stage_interval=0.1)
    async with app:
        jobs = await app.insert_all(
            [
                NeedsArgs.new({}),
                stop_iteration.new({}),
                Misbehaving.new({"what": "cancelled_error"}),
                Misbehaving.new({"what": "snooze_with_odd_meta"}, meta={"snoozed": "x"}),
            ]
        )
        await eventually(
            lambda: (
                sql("SELECT count(*) FROM oban_jobs WHERE state IN ('discarded', 'completed')")[0][
                    0
                ]
                == 4
            ),
            timeout=15,
        )
    rows = {r[0]: r[1:] for r in sql("SELECT id, state::text, errors FROM oban_jobs")}
    needs, stop_it, cancel_err, odd = (rows[j.id] for j in jobs)
    assert needs[0] == "discarded" and "TypeError" in needs[1][0]["error"]
    assert stop_it[0] == "discarded" and "StopIteration" in stop_it[1][0]["error"]
    assert cancel_err[0] == "discarded" and "CancelledError" in cancel_err[1][0]["error"]
    # a worker's own CancelledError spends attempts like any error: 2 runs, no hot loop
    assert len([r for r in scripted.RUNS if r[0] == jobs[2].id]) == 2
    assert odd[0] == "completed"


async def test_sync_timeouts_count_running_time_not_waiting_for_a_thread(
    make_app: Any, sql: Any
) -> None:
    app = make_app(queues={"default": 3}, sync_threads=1)
    async with app:
        await app.insert_all([slow_sync.new({}) for _ in range(3)])
        # One thread: they run one after the other (0.6 s each), each within its 1.5 s.
        await eventually(lambda: _all_finished(sql, 3), timeout=15)
    assert sql("SELECT array_agg(DISTINCT state::text) FROM oban_jobs")[0][0] == ["completed"]


async def test_a_hand_made_row_with_attempts_spent_does_not_block_the_queue(
    make_app: Any, sql: Any
) -> None:
    app = make_app(queues={"default": 2})
    spent, _fresh = await app.insert_all([Scripted.new({}, max_attempts=1), Scripted.new({})])
    sql("UPDATE oban_jobs SET attempt = 1 WHERE id = %s", (spent.id,))  # an operator's fix
    async with app:
        await eventually(lambda: _all_finished(sql, 2))
    assert {r[0] for r in sql("SELECT state::text FROM oban_jobs")} == {"completed"}


async def test_bulk_insert_on_a_plain_connection_rolls_back_with_it(
    make_app: Any, dsn: str, sql: Any
) -> None:
    app = make_app()
    await app.migrate()
    async with await psycopg.AsyncConnection.connect(dsn) as conn:  # not autocommit
        await app.insert_all([Scripted.new({"i": i}) for i in range(300)], conn=conn)
        await conn.rollback()
        kept = await app.insert_all([Scripted.new({"i": i}) for i in range(300)], conn=conn)
        await conn.commit()
    assert sql("SELECT count(*) FROM oban_jobs")[0][0] == 300
    assert (await app.get_job(kept[0].id)).state is JobState.AVAILABLE


async def test_a_malformed_pkill_is_ignored(make_app: Any) -> None:
    app = make_app(queues={"default": 2})
    async with app:
        job = await app.insert(Scripted.new({"do": "block", "key": "k"}))
        await eventually(lambda: job.id in app.check_queue("default")["running_ids"])
        app._node.on_signal("x", {"action": "pkill", "job_id": True})  # bool is not an id
        app._node.on_signal("x", {"action": "pkill", "job_id": str(job.id)})
        assert job.id in app.check_queue("default")["running_ids"]
        scripted.gate("k").set()
        await eventually(lambda: app.check_queue("default")["running"] == 0)
    assert (await make_app().get_job(job.id)).state is JobState.COMPLETED
