"""The lifeline rescues jobs of producers that stopped heartbeating, and only those."""

from __future__ import annotations

import time
from typing import Any

from conftest import eventually
from support import scripted
from support.scripted import Scripted

from kerrera import ConfigError, JobState, Kerrera


async def test_rescue_picks_only_orphans(make_app: Any, sql: Any) -> None:
    app = make_app()
    jobs = await app.insert_all([Scripted.new({"n": i}, max_attempts=2) for i in range(5)])
    ids = [j.id for j in jobs]
    sql(
        "INSERT INTO kerrera_producers (uuid, node, queue, updated_at) VALUES "
        "('dead', 'n1', 'default', timezone('UTC', now()) - interval '1 hour'), "
        "('alive', 'n2', 'default', timezone('UTC', now()))"
    )
    executing = [  # (job, producer uuid, attempt, started how long ago)
        (ids[0], "dead", 1, "1 second"),  # its producer expired: rescued
        (ids[1], "dead", 2, "1 second"),  # ... with no attempts left: discarded
        (ids[2], "alive", 1, "3 hours"),  # a live producer's long job: left alone
        (ids[3], "elixir", 1, "5 minutes"),  # never seen here, recent: left alone
        (ids[4], "elixir", 1, "2 hours"),  # never seen here, past rescue_after: rescued
    ]
    for job_id, uuid, attempt, ago in executing:
        sql(
            "UPDATE oban_jobs SET state = 'executing', attempt = %s, attempted_by = "
            "ARRAY['node', %s], attempted_at = timezone('UTC', now()) - %s::interval "
            "WHERE id = %s",
            (attempt, uuid, ago, job_id),
        )
    rescued, expired = await app.engine.rescue_jobs(30, 3600)  # opened by the insert
    assert (rescued, expired) == (3, 1)
    states = dict(sql("SELECT id, state::text FROM oban_jobs"))
    assert [states[i] for i in ids] == [
        "available",
        "discarded",
        "executing",
        "executing",
        "available",
    ]
    metas = dict(sql("SELECT id, meta FROM oban_jobs"))
    assert metas[ids[0]]["rescued"] == 1 and "rescued" not in metas[ids[2]]
    assert sql("SELECT uuid FROM kerrera_producers") == [("alive",)]


async def test_a_live_nodes_long_job_is_never_rescued(make_app: Any) -> None:
    app = make_app(
        queues={"default": 2}, heartbeat_interval=0.2, producer_ttl=1.5, rescue_interval=0.1
    )
    async with app:
        job = await app.insert(Scripted.new({"do": "block", "key": "long"}))
        await eventually(lambda: job.id in app.check_queue("default")["running_ids"])
        # Count the lifeline's runs: the test means something only once several have
        # happened more than a ttl after the job started.
        runs: list[float] = []
        rescue = app.engine.rescue_jobs

        async def counted_rescue(ttl: float, rescue_after: float) -> tuple[int, int]:
            runs.append(time.monotonic())
            return await rescue(ttl, rescue_after)

        app.engine.rescue_jobs = counted_rescue  # type: ignore[method-assign]
        started = time.monotonic()
        await eventually(lambda: len([t for t in runs if t > started + 2 * 1.5]) >= 3, timeout=15)
        assert (await app.get_job(job.id)).state is JobState.EXECUTING
        scripted.gate("long").set()
        await eventually(lambda: app.check_queue("default")["running"] == 0)
        done = await app.get_job(job.id)
    assert done.state is JobState.COMPLETED and "rescued" not in done.meta
    assert [r[0] for r in scripted.RUNS] == [job.id]


def test_ttl_must_outlast_the_heartbeat() -> None:
    import pytest

    with pytest.raises(ConfigError, match="producer_ttl"):
        Kerrera("postgresql://unused", heartbeat_interval=10, producer_ttl=5)
