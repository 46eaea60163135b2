"""Chunk workers: collected by size, timeout and partition; outcomes per job; stops."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from acceptance.nodes import Node, until
from conftest import eventually
from support import chunked
from support.chunked import (
    Blocking,
    ByAccount,
    Hundred,
    Outcomes,
    Quick,
    Stray,
    Traced,
    Waiting,
    summed,
)
from support.scripted import Scripted

from kerrera import ConfigError, Job, Kerrera, telemetry
from kerrera.core.chunk import ChunkResult, ChunkWorker, chunk_worker


@pytest.fixture(autouse=True)
def _reset_chunks() -> Any:
    chunked.reset()
    yield
    chunked.gate().set()


def _states(sql: Any) -> dict[int, str]:
    return {row[0]: row[1] for row in sql("SELECT id, state::text FROM oban_jobs")}


def _done(sql: Any, n: int, state: str = "completed") -> Any:
    return lambda: sql("SELECT count(*) FROM oban_jobs WHERE state = %s", (state,))[0][0] == n


def _ran_ids() -> list[int]:
    return [job_id for chunk in chunked.CHUNKS for job_id, _args in chunk]


# -- collecting --------------------------------------------------------------------------
async def test_250_jobs_run_as_three_chunks_of_at_most_100(make_app: Any, sql: Any) -> None:
    app = make_app(queues={"chunks": 2})
    jobs = await app.insert_all([Hundred.new({"n": i}) for i in range(250)])
    async with app:
        await eventually(_done(sql, 250), timeout=30)
    sizes = sorted(len(chunk) for chunk in chunked.CHUNKS)
    assert sizes == [50, 100, 100]
    assert sorted(_ran_ids()) == sorted(job.id for job in jobs)  # each once


async def test_timeout_flushes_a_partial_chunk(make_app: Any, sql: Any) -> None:
    app = make_app(queues={"chunks": 1})
    async with app:
        jobs = await app.insert_all([Quick.new({"n": i}) for i in range(5)])
        await eventually(_done(sql, 5), timeout=15)
    assert [sorted(i for i, _a in chunk) for chunk in chunked.CHUNKS] == [
        sorted(job.id for job in jobs)
    ]


async def test_partitions_never_mix(make_app: Any, sql: Any) -> None:
    app = make_app(queues={"chunks": 3})
    specs = [{"account_id": i % 3, "n": i} for i in range(60)] + [{"n": "no key"}] * 2
    await app.insert_all([ByAccount.new(args) for args in specs])
    async with app:
        await eventually(_done(sql, 62), timeout=30)
    for chunk in chunked.CHUNKS:
        assert len(chunk) <= 8
        assert len({args.get("account_id") for _id, args in chunk}) == 1
    assert len(_ran_ids()) == len(set(_ran_ids())) == 62


async def test_a_chunk_takes_one_slot(make_app: Any, sql: Any) -> None:
    app = make_app(queues={"chunks": 2})
    async with app:
        await app.insert_all([Blocking.new({"n": i}) for i in range(10)])
        await eventually(lambda: len(chunked.CHUNKS) == 1, timeout=15)
        assert len(chunked.CHUNKS[0]) == 10  # ten jobs in one chunk...
        assert app.check_queue("chunks")["running"] == 10
        plain = await app.insert(Scripted.new({}, queue="chunks"))
        # ...that leave the second slot free: a plain job runs beside the blocked chunk
        await eventually(lambda: _states(sql)[plain.id] == "completed", timeout=15)
        assert len(chunked.CHUNKS) == 1 and not chunked.gate().is_set()
        chunked.gate().set()
        await eventually(_done(sql, 11), timeout=15)


async def test_a_function_chunk_worker(make_app: Any, sql: Any) -> None:
    app = make_app(queues={"chunks": 1})
    async with app:
        await app.insert_all([summed.new({"n": i}) for i in range(12)])
        await eventually(_done(sql, 12), timeout=15)
    assert all(len(chunk) <= 5 for chunk in chunked.CHUNKS)
    assert len(_ran_ids()) == 12


# -- outcomes ----------------------------------------------------------------------------
async def test_partial_outcomes_land_on_the_right_jobs(make_app: Any, sql: Any) -> None:
    app = make_app(queues={"chunks": 1})
    plan = ["ok", "fail", "ok", "snooze", "fail_text", "cancel", "ok"]
    jobs = await app.insert_all([Outcomes.new({"do": do, "n": i}) for i, do in enumerate(plan)])
    last = await app.insert(Outcomes.new({"do": "fail", "n": 99}, max_attempts=1))
    async with app:
        await eventually(lambda: "executing" not in _states(sql).values(), timeout=15)
        await eventually(lambda: len(_ran_ids()) == 8, timeout=15)
        await eventually(lambda: "executing" not in _states(sql).values(), timeout=15)
    rows = {
        r[0]: r[1:]
        for r in sql("SELECT id, state::text, errors, max_attempts, meta FROM oban_jobs")
    }
    expected = {"ok": "completed", "fail": "retryable", "snooze": "scheduled",
                "fail_text": "retryable", "cancel": "cancelled"}  # fmt: skip
    for job, do in zip(jobs, plan, strict=True):
        assert rows[job.id][0] == expected[do], (job.id, do)
    by_do = {do: rows[job.id] for job, do in zip(jobs, plan, strict=True)}
    assert "ValueError: bad row 1" in by_do["fail"][1][-1]["error"]
    assert "rejected by the API" in by_do["fail_text"][1][-1]["error"]
    assert by_do["cancel"][1][-1]["error"] == "(Cancelled) gone"
    assert by_do["snooze"][2] == 4 and by_do["snooze"][3]["snoozed"] == 1  # no attempt spent
    assert rows[last.id][0] == "discarded"  # its only attempt is spent


async def test_raising_fails_every_job_of_the_chunk(make_app: Any, sql: Any) -> None:
    app = make_app(queues={"chunks": 1})
    await app.insert_all([Outcomes.new({"do": d}) for d in ("ok", "raise", "ok")])
    async with app:
        await eventually(_done(sql, 3, "retryable"), timeout=15)
    errors = sql("SELECT errors FROM oban_jobs")
    assert all("RuntimeError: the whole chunk failed" in e[0][-1]["error"] for e in errors)


async def test_a_result_naming_a_stranger_fails_the_chunk(make_app: Any, sql: Any) -> None:
    app = make_app(queues={"chunks": 1})
    await app.insert_all([Stray.new({"n": i}) for i in range(3)])
    async with app:
        await eventually(_done(sql, 3, "retryable"), timeout=15)
    errors = sql("SELECT errors FROM oban_jobs")
    assert all("not in this chunk" in e[0][-1]["error"] for e in errors)


async def test_cancelling_one_job_of_a_running_chunk(make_app: Any, sql: Any) -> None:
    app = make_app(queues={"chunks": 1})
    async with app:
        jobs = await app.insert_all([Blocking.new({"n": i}) for i in range(4)])
        await eventually(lambda: len(chunked.CHUNKS) == 1, timeout=15)
        await app.cancel_job(jobs[1].id)
        chunked.gate().set()
        await eventually(_done(sql, 3), timeout=15)
        await eventually(lambda: app.check_queue("chunks")["running"] == 0, timeout=15)
    states = _states(sql)
    assert states[jobs[1].id] == "cancelled"
    assert [states[j.id] for j in (jobs[0], jobs[2], jobs[3])] == ["completed"] * 3
    assert len(chunked.CHUNKS) == 1  # the chunk ran on, never interrupted and re-run


async def test_cancelling_a_job_waiting_in_a_filling_chunk(make_app: Any, sql: Any) -> None:
    app = make_app(queues={"chunks": 1})
    await app.start()
    jobs = await app.insert_all([Waiting.new({"n": i}) for i in range(3)])
    await eventually(_done(sql, 3, "executing"), timeout=15)  # claimed, filling
    await app.cancel_job(jobs[0].id)
    ledger = app._node.producer("chunks").ledger  # (the producer lets go of it at once)
    await eventually(lambda: jobs[0].id not in ledger.held_ids(), timeout=15)
    assert set(ledger.held_ids()) == {jobs[1].id, jobs[2].id}  # still filling
    await app.stop(grace=5.0)
    states = _states(sql)
    assert states[jobs[0].id] == "cancelled"
    assert [states[j.id] for j in jobs[1:]] == ["available"] * 2  # put back at the stop
    assert chunked.CHUNKS == []


async def test_telemetry_per_job_and_per_chunk(make_app: Any, sql: Any) -> None:
    seen: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    telemetry.attach("chunk-test", ["chunk.*", "job.stop"], lambda e, m, d: seen.append((e, m, d)))
    try:
        app = make_app(queues={"chunks": 1})
        await app.insert_all([Quick.new({"n": i}) for i in range(4)])
        async with app:
            await eventually(_done(sql, 4), timeout=15)
            await eventually(lambda: any(e == "chunk.stop" for e, _m, _d in seen), timeout=5)
    finally:
        telemetry.detach("chunk-test")
    events = Counter(e for e, _m, _d in seen)
    assert events == {"chunk.start": 1, "chunk.stop": 1, "job.stop": 4}
    stop = next((m, d) for e, m, d in seen if e == "chunk.stop")
    assert stop[0]["size"] == 4 and stop[1]["states"] == {"completed": 4}


async def test_jobs_of_a_lost_chunk_fetch_reply_are_put_back(make_app: Any, sql: Any) -> None:
    app = make_app(queues={"chunks": 1})
    jobs = await app.insert_all([Quick.new({"n": i}) for i in range(30)])
    engine = app.engine
    real = engine.fetch_chunk
    lost: list[int] = []

    async def reply_lost(*args: Any, **kwargs: Any) -> Any:
        claimed = await real(*args, **kwargs)
        if not lost and claimed:  # the first claim commits, and its reply never arrives
            lost.extend(job.id for job in claimed)
            raise psycopg.OperationalError("the connection was lost")
        return claimed

    engine.fetch_chunk = reply_lost
    async with app:
        await eventually(_done(sql, 30), timeout=30)
    assert lost, "the first fetch for a chunk should have claimed jobs"
    assert sorted(_ran_ids()) == sorted(job.id for job in jobs)  # each once, none lost
    first = next(chunk for chunk in chunked.CHUNKS if {i for i, _a in chunk} & set(lost))
    assert not {i for i, _a in first} - set(lost)  # the lost ones ran in a later chunk
    reclaimed = sql("SELECT max_attempts FROM oban_jobs WHERE id = ANY(%s)", (lost,))
    assert {m for (m,) in reclaimed} == {21}  # put back without spending an attempt


# -- stopping ----------------------------------------------------------------------------
async def test_a_stopped_node_releases_its_running_chunk(make_app: Any, sql: Any) -> None:
    first = make_app(queues={"chunks": 1})
    await first.start()
    jobs = await first.insert_all([Blocking.new({"n": i}) for i in range(6)])
    await eventually(lambda: len(chunked.CHUNKS) == 1, timeout=15)
    await first.stop(grace=0.2)  # the chunk is still blocked: cancelled and put back
    rows = sql("SELECT state::text, attempt, max_attempts FROM oban_jobs")
    assert rows == [("available", 1, 21)] * 6  # attempt not spent
    chunked.gate().set()
    second = make_app(queues={"chunks": 1})
    async with second:
        await eventually(_done(sql, 6), timeout=15)
    # Each job ran in the interrupted chunk and once more to completion, never beside it.
    assert Counter(_ran_ids()) == {job.id: 2 for job in jobs}


async def test_a_stopped_node_puts_back_a_filling_chunk(make_app: Any, sql: Any) -> None:
    app = make_app(queues={"chunks": 1})
    await app.start()
    await app.insert_all([Waiting.new({"n": i}) for i in range(3)])
    await eventually(_done(sql, 3, "executing"), timeout=15)  # claimed, filling
    await app.stop(grace=5.0)
    assert chunked.CHUNKS == []  # never ran
    assert sql("SELECT DISTINCT state::text FROM oban_jobs") == [("available",)]


async def test_a_running_chunk_finishes_within_the_grace_period(make_app: Any, sql: Any) -> None:
    app = make_app(queues={"chunks": 1})
    await app.start()
    await app.insert_all([Blocking.new({"n": i}) for i in range(5)])
    await eventually(lambda: len(chunked.CHUNKS) == 1, timeout=15)
    stopping = asyncio.create_task(app.stop(grace=30.0))
    await asyncio.sleep(0)  # (let the stop begin before the chunk may end)
    chunked.gate().set()
    assert await stopping == 0
    assert sql("SELECT DISTINCT state::text FROM oban_jobs") == [("completed",)]


# -- outside a node ------------------------------------------------------------------------
async def test_perform_job_runs_a_chunk_of_one() -> None:
    from kerrera.testing import perform_job

    job = await perform_job(Outcomes, {"do": "cancel"})
    assert job.state == "cancelled"
    assert chunked.CHUNKS and len(chunked.CHUNKS[0]) == 1


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="'size'"):

        class BadSize(ChunkWorker, size=0):
            async def process(self, jobs: list[Job]) -> object:
                return None

    with pytest.raises(ConfigError, match="'by'"):

        class BadBy(ChunkWorker, by="account_id"):
            async def process(self, jobs: list[Job]) -> object:
                return None

    with pytest.raises(ConfigError, match="'timeout'"):

        class BadWait(ChunkWorker, timeout=-1):
            async def process(self, jobs: list[Job]) -> object:
                return None

    with pytest.raises(ConfigError, match="'run_timeout'"):

        class BadRun(ChunkWorker, run_timeout=0):
            async def process(self, jobs: list[Job]) -> object:
                return None

    with pytest.raises(ConfigError, match="async def process"):

        class Sync(ChunkWorker):
            def process(self, jobs: list[Job]) -> object:  # type: ignore[override]
                return None

    with pytest.raises(ConfigError, match="async function"):
        chunk_worker(lambda jobs: None)


def test_chunk_results_are_checked() -> None:
    with pytest.raises(ConfigError, match="more than once"):
        ChunkResult(failed={1: "x"}, cancelled={1: "y"})
    with pytest.raises(ConfigError, match="'snoozed'"):
        ChunkResult(snoozed={1: -5})
    with pytest.raises(ConfigError, match="keyed by job id"):
        ChunkResult(failed={"1": "x"})  # type: ignore[dict-item]
    result = ChunkResult(failed={Job(id=3): "x"}, snoozed={4: 1})
    assert result.named() == {3, 4}
    with pytest.raises(ValueError, match=r"\[4\]"):
        result.check([3])


# -- real nodes ------------------------------------------------------------------------------
FAST_LIFELINE = ("--heartbeat-interval", "0.2", "--producer-ttl", "2", "--rescue-interval", "0.2")


def _events(path: Path) -> list[tuple[str, str, int, str]]:
    if not path.exists():
        return []
    return [
        (e, tag, int(attempt), node)
        for e, tag, attempt, node in (line.split(" ", 3) for line in path.read_text().splitlines())
    ]


def test_kill_9_mid_chunk_reruns_only_what_did_not_finish(
    run: Callable[..., Node], client: Kerrera, tmp_path: Path
) -> None:
    path = tmp_path / "evidence"
    nodes = {
        name: run("start", "--queues", "chunks:2", "--module", "support.chunked",
                  "--node", name, *FAST_LIFELINE)
        for name in ("n1", "n2")
    }  # fmt: skip
    for node in nodes.values():
        node.wait_for("running queues")
    jobs = client.sync.insert_all(
        [Traced.new({"path": str(path), "tag": f"j{i}", "seconds": 0.5}) for i in range(80)]
    )
    until(lambda: any(e == "start" and node == "n1" for e, _t, _a, node in _events(path)))
    nodes["n1"].proc.send_signal(signal.SIGKILL)
    nodes["n1"].wait(timeout=10)
    killed_at = len(_events(path))
    ids = [job.id for job in jobs]
    until(
        lambda: all(str(client.sync.get_job(i).state) == "completed" for i in ids),  # type: ignore[union-attr]
        timeout=60,
    )
    events = _events(path)
    finishes = Counter(tag for e, tag, _a, _n in events if e == "finish")
    assert finishes == {f"j{i}": 1 for i in range(80)}  # every job finished exactly once
    before = events[:killed_at]
    cut = {t for e, t, _a, n in before if e == "start" and n == "n1"} - {
        t for e, t, _a, n in before if e == "finish" and n == "n1"
    }
    assert cut, "the kill should have interrupted a chunk"
    for tag, count in Counter(t for e, t, _a, _n in events if e == "start").items():
        assert count == (2 if tag in cut else 1), tag  # re-run only what the kill cut
    for i, (e, tag, _a, node) in enumerate(events):
        if e == "start" and tag in cut and node != "n1":
            assert i >= killed_at  # and only after the kill
