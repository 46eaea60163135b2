"""A node whose database connections are killed under it (pg_terminate_backend): it must
reconnect by itself, hear notifications again, and lose no job.

Only the node under test is shot: it connects with an application_name of its own, and
the kill targets that name (the database is shared with other tests)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest
from acceptance import nodeworkers
from acceptance.nodeworkers import counted
from conftest import eventually
from psycopg.conninfo import make_conninfo

from kerrera import JobState, Kerrera


@pytest.fixture
def app_name() -> str:
    return f"kerrera-under-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def node_app(dsn: str, prefix: str, app_name: str) -> AsyncIterator[Callable[..., Kerrera]]:
    """Build the node under test: every connection it opens carries `app_name`."""
    apps: list[Kerrera] = []
    nodeworkers.reset_runs()

    def build(**options: Any) -> Kerrera:
        options.setdefault("shutdown_grace_period", 2.0)
        app = Kerrera(make_conninfo(dsn, application_name=app_name), prefix=prefix, **options)
        apps.append(app)
        return app

    yield build
    for app in apps:
        await app.stop(grace=0.5)


@pytest.fixture
async def client(dsn: str, prefix: str) -> AsyncIterator[Kerrera]:
    """Inserts and reads jobs on connections that are never killed."""
    async with Kerrera(dsn, prefix=prefix) as app:
        yield app


def kill_node_connections(dsn: str, app_name: str) -> list[int]:
    """Terminate every backend of the node under test; return their pids."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
            "AND pid <> pg_backend_pid() AND pg_terminate_backend(pid)", (app_name,)
        ).fetchall()
    return [pid for (pid,) in rows]


def node_backends(dsn: str, app_name: str) -> list[tuple[int, str]]:
    """(pid, last query) of the node's live backends."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid, query FROM pg_stat_activity WHERE application_name = %s",
            (app_name,),
        ).fetchall()
    return [(pid, query) for pid, query in rows]


async def _completed_within(client: Kerrera, job_id: int, timeout: float) -> float:
    started = time.monotonic()

    async def done() -> bool:
        job = await client.get_job(job_id)
        return job is not None and job.state is JobState.COMPLETED

    await eventually(done, timeout=timeout)
    return time.monotonic() - started


async def test_node_reconnects_and_hears_notifications_again(
    node_app: Callable[..., Kerrera], client: Kerrera, dsn: str, app_name: str
) -> None:
    # poll_interval=30: within this test a job only starts quickly if a notification (or
    # the notifier's catch-up when it comes back) wakes its producer.
    node = node_app(queues={"default": 5}, poll_interval=30)
    await node.start()
    first = await client.insert(counted.new({}))
    await _completed_within(client, first.id, timeout=5)  # type: ignore[arg-type]

    def listening() -> list[int]:
        return [pid for pid, query in node_backends(dsn, app_name) if query.startswith("LISTEN")]

    await eventually(listening)
    killed = kill_node_connections(dsn, app_name)
    assert len(killed) >= 2, f"expected the pool and the listener to be shot, got {killed}"

    # Inserted while the node is deaf: its notification is lost; the node must catch up.
    deaf = await client.insert(counted.new({}))
    await _completed_within(client, deaf.id, timeout=5)  # type: ignore[arg-type]

    # Once it listens again on a new connection, notifications wake it as before.
    await eventually(lambda: [pid for pid in listening() if pid not in killed], timeout=5)
    later = []
    for _ in range(3):
        job = await client.insert(counted.new({}))
        await _completed_within(client, job.id, timeout=5)  # type: ignore[arg-type]
        later.append(job)

    assert sorted(nodeworkers.RUNS) == sorted((j.id, 1) for j in [first, deaf, *later])


async def test_no_job_lost_when_connections_die_mid_batch(
    node_app: Callable[..., Kerrera], client: Kerrera, dsn: str, app_name: str,
    sql: Callable[..., list[tuple[Any, ...]]],
) -> None:  # fmt: skip
    total = 200
    node = node_app(queues={"default": 5}, poll_interval=0.5)
    jobs = await client.insert_all([counted.new({"seconds": 0.02, "n": n}) for n in range(total)])
    ids = {job.id for job in jobs}
    await node.start()

    def completed() -> int:
        return dict(sql("SELECT state::text, count(*) FROM oban_jobs GROUP BY state")).get(
            "completed", 0
        )

    kills = []
    for threshold in (40, 100, 150):  # shoot the node three times while it works
        await eventually(lambda t=threshold: completed() >= t, timeout=20)  # type: ignore[misc]
        kills.append(kill_node_connections(dsn, app_name))
    assert all(kills), f"some kill found no backend of the node: {kills}"

    async def settled() -> dict[str, int]:
        counts = dict(sql("SELECT state::text, count(*) FROM oban_jobs GROUP BY state"))
        return counts if counts.get("completed") == total else {}

    try:
        await eventually(settled, timeout=30)
    finally:
        counts = dict(sql("SELECT state::text, count(*) FROM oban_jobs GROUP BY state"))
    assert counts == {"completed": total}, counts
    rows = sql("SELECT id, attempt, errors FROM oban_jobs")
    assert {row[0] for row in rows} == ids
    assert all(attempt == 1 and errors == [] for _, attempt, errors in rows), rows
    ran = [job_id for job_id, _ in nodeworkers.RUNS]
    assert sorted(ran) == sorted(ids), "every job ran exactly once"
