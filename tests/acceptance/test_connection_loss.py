"""A node whose database connections are killed under it (pg_terminate_backend), or cut
by the network at the worst moment: it must reconnect by itself, hear notifications again,
lose no job and run none twice.

Only the node under test is shot: it connects with an application_name of its own, and
the kill targets that name (the database is shared with other tests)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest
from acceptance import nodeworkers
from acceptance.nodes import kill_node_connections
from acceptance.nodeworkers import counted
from conftest import eventually
from psycopg.conninfo import conninfo_to_dict, make_conninfo

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


def node_backends(dsn: str, app_name: str) -> list[tuple[int, str]]:
    """(pid, last query) of the node's live backends."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid, query FROM pg_stat_activity WHERE application_name = %s",
            (app_name,),
        ).fetchall()
    return [(pid, query) for pid, query in rows]


#: Seconds within which a job woken by a notification must complete (far below the poll).
WOKEN = 20


async def _completed_within(client: Kerrera, job_id: int, timeout: float) -> None:
    async def done() -> bool:
        job = await client.get_job(job_id)
        return job is not None and job.state is JobState.COMPLETED

    await eventually(done, timeout=timeout)


async def test_node_reconnects_and_hears_notifications_again(
    node_app: Callable[..., Kerrera], client: Kerrera, dsn: str, app_name: str
) -> None:
    # poll_interval=60: within this test a job only starts in time if a notification (or
    # the notifier's catch-up when it comes back) wakes its producer. Each wait below
    # allows for a loaded machine and a reconnect, and still ends long before a poll.
    node = node_app(queues={"default": 5}, poll_interval=60)
    await node.start()
    first = await client.insert(counted.new({}))
    await _completed_within(client, first.id, timeout=WOKEN)  # type: ignore[arg-type]

    def listening() -> list[int]:
        return [pid for pid, query in node_backends(dsn, app_name) if query.startswith("LISTEN")]

    await eventually(listening)
    killed = kill_node_connections(dsn, app_name)
    assert len(killed) >= 2, f"expected the pool and the listener to be shot, got {killed}"

    # Inserted right after the kill, while the node is (most likely) still deaf: its
    # notification is lost, so the catch-up when the notifier comes back must start it.
    deaf = await client.insert(counted.new({}))
    await _completed_within(client, deaf.id, timeout=WOKEN)  # type: ignore[arg-type]

    # Once it listens again on a new connection, notifications wake it as before.
    await eventually(lambda: [pid for pid in listening() if pid not in killed], timeout=WOKEN)
    later = []
    for _ in range(3):
        job = await client.insert(counted.new({}))
        await _completed_within(client, job.id, timeout=WOKEN)  # type: ignore[arg-type]
        later.append(job)

    assert sorted(nodeworkers.RUNS) == sorted((j.id, 1) for j in [first, deaf, *later])


async def _run_batch_under_fire(
    node: Kerrera, client: Kerrera, dsn: str, app_name: str,
    sql: Callable[..., list[tuple[Any, ...]]], total: int = 200,
) -> set[int]:  # fmt: skip
    """Run `total` short jobs on `node`, killing its connections three times on the way;
    return the ids of the jobs, once the node has settled (or the deadline passed)."""
    jobs = await client.insert_all([counted.new({"seconds": 0.02, "n": n}) for n in range(total)])
    await node.start()

    def counts() -> dict[str, int]:
        return dict(sql("SELECT state::text, count(*) FROM oban_jobs GROUP BY state"))

    kills = []
    for threshold in (40, 100, 150):  # shoot the node three times while it works
        await eventually(lambda t=threshold: counts().get("completed", 0) >= t, timeout=20)  # type: ignore[misc]
        kills.append(kill_node_connections(dsn, app_name))
    assert all(kills), f"some kill found no backend of the node: {kills}"
    with contextlib.suppress(AssertionError):  # the caller's assertions say what is left
        await eventually(lambda: counts().get("completed") == total, timeout=30)
    return {job.id for job in jobs}  # type: ignore[misc]


async def test_no_job_lost_when_connections_die_mid_batch(
    node_app: Callable[..., Kerrera], client: Kerrera, dsn: str, app_name: str,
    sql: Callable[..., list[tuple[Any, ...]]],
) -> None:  # fmt: skip
    node = node_app(queues={"default": 5}, poll_interval=0.5)
    ids = await _run_batch_under_fire(node, client, dsn, app_name, sql)
    counts = dict(sql("SELECT state::text, count(*) FROM oban_jobs GROUP BY state"))
    assert counts == {"completed": len(ids)}, counts  # none lost, none stuck executing
    rows = sql("SELECT id, max_attempts - attempt, errors FROM oban_jobs")
    assert {row[0] for row in rows} == ids
    # Exactly one attempt spent each (a claim whose reply was lost is given back).
    assert all(left == 3 - 1 and errors == [] for _, left, errors in rows), rows
    assert set(job_id for job_id, _ in nodeworkers.RUNS) == ids  # each one really ran


async def test_no_job_runs_twice_when_connections_die_mid_batch(
    node_app: Callable[..., Kerrera], client: Kerrera, dsn: str, app_name: str,
    sql: Callable[..., list[tuple[Any, ...]]],
) -> None:  # fmt: skip
    # The connections are killed while idle, so no statement's outcome is ever in doubt:
    # nothing justifies running a job a second time.
    node = node_app(queues={"default": 5}, poll_interval=0.5)
    ids = await _run_batch_under_fire(node, client, dsn, app_name, sql)
    ran = sorted(job_id for job_id, _ in nodeworkers.RUNS)
    twice = sorted({job_id for job_id in ran if ran.count(job_id) > 1})
    assert not twice, f"{len(ran) - len(set(ran))} extra run(s), of jobs {twice}"
    assert ran == sorted(ids)


# -- a network cut at the worst moment -------------------------------------------------------

READY_FOR_QUERY = b"Z\x00\x00\x00\x05"  # + status byte: the end of a reply


class CuttingProxy:
    """A TCP proxy in front of PostgreSQL. The first statement whose text contains `marker`
    is let through and runs (and commits) on the server; its whole reply is swallowed and
    both sides are closed. To the node this is a network failure after the commit: it
    cannot know what the statement did."""

    def __init__(self, dsn: str, marker: bytes) -> None:
        params = conninfo_to_dict(dsn)
        self._host = str(params.get("host") or "localhost")
        self._port = int(params.get("port") or 5432)
        self._marker = marker
        self._armed = True
        self.cuts = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.dsn = ""
        self._params = params

    async def start(self, **extra: str) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        params = {k: v for k, v in self._params.items() if k != "hostaddr"}
        params.update(host="127.0.0.1", port=str(port), sslmode="disable", **extra)
        self.dsn = make_conninfo(**params)
        return self.dsn

    async def close(self) -> None:
        """Stop accepting and close every proxied connection."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._host.startswith("/"):  # a unix socket directory
            return await asyncio.open_unix_connection(f"{self._host}/.s.PGSQL.{self._port}")
        return await asyncio.open_connection(self._host, self._port)

    async def _accept(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(cwriter)
        sreader, swriter = await self._upstream()
        self._writers.add(swriter)
        hit = asyncio.Event()

        async def to_server() -> None:
            tail = b""
            while data := await creader.read(65536):
                if self._armed and self._marker in tail + data:
                    self._armed = False
                    hit.set()
                tail = data[-len(self._marker) :]
                swriter.write(data)
                await swriter.drain()

        async def to_client() -> None:
            swallowed = b""
            while data := await sreader.read(65536):
                if hit.is_set():  # swallow the reply up to its ReadyForQuery, then cut
                    swallowed += data
                    if swallowed[-6:-1] == READY_FOR_QUERY:
                        self.cuts += 1
                        return
                    continue
                cwriter.write(data)
                await cwriter.drain()

        try:
            pumps = [asyncio.create_task(to_server()), asyncio.create_task(to_client())]
            _, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for pump in pending:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            for writer in (cwriter, swriter):
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
                self._writers.discard(writer)
            self._tasks.discard(task)


async def test_no_job_stuck_when_a_claiming_reply_is_lost(
    dsn: str, prefix: str, client: Kerrera, sql: Callable[..., list[tuple[Any, ...]]]
) -> None:
    nodeworkers.reset_runs()
    jobs = await client.insert_all([counted.new({"n": n}) for n in range(10)])
    # The statement that claims jobs is the one that sets attempted_by to this node.
    proxy = CuttingProxy(dsn, marker=b"attempted_by = ")
    node = Kerrera(
        await proxy.start(),
        prefix=prefix,
        queues={"default": 5},
        poll_interval=0.2,
        shutdown_grace_period=0.5,
    )
    try:
        await node.start()
        try:
            await eventually(lambda: proxy.cuts, timeout=10)
        except AssertionError:
            pytest.fail("the proxy never cut a claiming statement (did its text change?)")

        async def settled() -> dict[str, int]:
            counts = dict(sql("SELECT state::text, count(*) FROM oban_jobs GROUP BY state"))
            return counts if counts.get("completed") == len(jobs) else {}

        with contextlib.suppress(AssertionError):  # the assertion below says what is left
            await eventually(settled, timeout=10)
        counts = dict(sql("SELECT state::text, count(*) FROM oban_jobs GROUP BY state"))
        assert counts == {"completed": len(jobs)}, counts
        assert sorted(job_id for job_id, _ in nodeworkers.RUNS) == sorted(j.id for j in jobs)
    finally:
        await node.stop(grace=0.5)
        await proxy.close()


async def test_user_calls_recover_after_the_pool_was_killed(
    node_app: Callable[..., Kerrera],
    dsn: str,
    app_name: str,
) -> None:
    # A client app (no queues) with several pooled connections, all killed at once: a
    # read succeeds right away (checked and retried), and an insert fails at most once.
    app = node_app(pool_size=4)
    await app.migrate()
    warm = [asyncio.create_task(app.insert(counted.new({"n": i}))) for i in range(4)]
    await asyncio.gather(*warm)
    assert len(kill_node_connections(dsn, app_name)) >= 2
    assert (await app.get_job(warm[0].result().id)) is not None
    failures = 0
    for i in range(4):
        try:
            await app.insert(counted.new({"after": i}))
        except psycopg.OperationalError:
            failures += 1
    assert failures <= 1
