"""The `kerrera` command as an operator runs it: real node processes, real signals, a real
PostgreSQL. Evidence comes from the database and from the file the workers append to."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from acceptance.nodes import Node, until
from acceptance.nodeworkers import hand_over, read_events, traced, traced_sync

from kerrera import Job, JobState, Kerrera
from kerrera.engine.migrations import LATEST_VERSION


def _jobs(client: Kerrera, jobs: list[Job]) -> dict[int, Job]:
    found = {}
    for job in jobs:
        assert job.id is not None
        now = client.sync.get_job(job.id)
        assert now is not None, f"job {job.id} was lost"
        found[job.id] = now
    return found


def _attempts_left(job: Job) -> int:
    return job.max_attempts - job.attempt


def _started(path: Path, tags: set[str]) -> bool:
    return tags <= {tag for event, tag, _, _ in read_events(path) if event == "start"}


# -- draining on SIGTERM ---------------------------------------------------------------------


def test_sigterm_drains_short_jobs_and_puts_long_ones_back(
    start_node: Callable[..., Node], client: Kerrera, tmp_path: Path
) -> None:
    grace = 4.0
    node = start_node(grace=grace, name="drainer")
    path = tmp_path / "events"
    short = [traced.new({"path": str(path), "tag": f"short{i}", "seconds": 2.0}) for i in range(2)]
    long = [
        traced.new({"path": str(path), "tag": "long-async", "seconds": 60}),
        traced_sync.new({"path": str(path), "tag": "long-sync", "seconds": 60}),
    ]
    # The long jobs go in first so that the short ones, started last, are still running
    # when the signal comes (they take 2 s; the signal follows their start at once).
    long = client.sync.insert_all(long)
    short = client.sync.insert_all(short)
    until(lambda: _started(path, {"short0", "short1", "long-async", "long-sync"}))
    assert not [e for e in read_events(path) if e[0] != "start"], "jobs ended too early"

    signalled = time.monotonic()
    node.signal(signal.SIGTERM)
    node.wait_for("shutting down")
    # Draining: the short jobs finish after the signal. A job inserted now is not taken,
    # even when a slot frees up.
    until(lambda: {"short0", "short1"} <= {t for e, t, _, _ in read_events(path) if e == "finish"})
    late = client.sync.insert(traced.new({"path": str(path), "tag": "late", "seconds": 0}))

    code = node.wait(timeout=grace + 10)
    elapsed = time.monotonic() - signalled
    assert code == 0, node.stderr
    assert elapsed >= grace * 0.9, f"exited after {elapsed:.1f}s without waiting the grace"
    assert "shutting down" in node.stderr
    assert "kerrera: stopped" in node.stderr

    rows = _jobs(client, [*short, *long, late])
    for job in short:
        assert rows[job.id].state is JobState.COMPLETED, rows[job.id]
        assert rows[job.id].attempt == 1
    for job in long:  # back to available, attempt not spent: not lost, not executing
        assert rows[job.id].state is JobState.AVAILABLE, rows[job.id]
        assert _attempts_left(rows[job.id]) == job.max_attempts, rows[job.id]
        assert rows[job.id].errors == []
    assert rows[late.id].state is JobState.AVAILABLE and rows[late.id].attempt == 0

    events = read_events(path)
    assert ("cancelled", "long-async", 1, "drainer") in events  # interrupted, not completed
    assert not [e for e in events if e[1].startswith("long") and e[0] == "finish"]
    assert not [e for e in events if e[1] == "late"], "a draining node fetched a new job"


def test_released_jobs_run_on_the_next_node(
    start_node: Callable[..., Node], client: Kerrera, tmp_path: Path
) -> None:
    path = tmp_path / "events"
    first = start_node(grace=0.3, name="first")
    job = client.sync.insert(traced.new({"path": str(path), "tag": "long", "seconds": 1.5}))
    until(lambda: _started(path, {"long"}))
    first.signal(signal.SIGTERM)
    assert first.wait(timeout=10) == 0, first.stderr
    assert client.sync.get_job(job.id).state is JobState.AVAILABLE  # type: ignore[union-attr]

    second = start_node(grace=5, name="second")
    until(lambda: client.sync.get_job(job.id).state is JobState.COMPLETED)  # type: ignore[union-attr]
    done = client.sync.get_job(job.id)
    assert done is not None
    # attempt counts runs (2); the interrupted one was given back (max_attempts + 1).
    assert (done.attempt, done.max_attempts) == (2, job.max_attempts + 1)
    assert _attempts_left(done) == job.max_attempts - 1, "only one attempt was spent"
    assert done.attempted_by[0] == "second"
    assert read_events(path) == [
        ("start", "long", 1, "first"),
        ("cancelled", "long", 1, "first"),
        ("start", "long", 2, "second"),
        ("finish", "long", 2, "second"),
    ]
    second.signal(signal.SIGTERM)
    assert second.wait(timeout=10) == 0, second.stderr


def test_second_sigterm_stops_at_once(
    start_node: Callable[..., Node], client: Kerrera, tmp_path: Path
) -> None:
    grace = 30.0
    node = start_node(grace=grace, name="hurried")
    path = tmp_path / "events"
    long = client.sync.insert_all(
        [
            traced.new({"path": str(path), "tag": "long-async", "seconds": 60}),
            traced_sync.new({"path": str(path), "tag": "long-sync", "seconds": 60}),
        ]
    )
    until(lambda: _started(path, {"long-async", "long-sync"}))

    signalled = time.monotonic()
    node.signal(signal.SIGTERM)
    node.wait_for("shutting down")
    node.signal(signal.SIGTERM)
    code = node.wait(timeout=10)
    elapsed = time.monotonic() - signalled
    assert code == 0, node.stderr
    assert elapsed < grace / 3, f"took {elapsed:.1f}s to stop after a second SIGTERM"
    assert "kerrera: stopped" in node.stderr

    rows = _jobs(client, long)
    for job in long:
        assert rows[job.id].state is JobState.AVAILABLE, rows[job.id]
        assert _attempts_left(rows[job.id]) == job.max_attempts, rows[job.id]
    assert ("cancelled", "long-async", 1, "hurried") in read_events(path)


def test_sigint_drains_like_sigterm(
    start_node: Callable[..., Node], client: Kerrera, tmp_path: Path
) -> None:
    node = start_node(grace=30, name="interrupted")  # ends when the job does, not at 30 s
    path = tmp_path / "events"
    job = client.sync.insert(traced.new({"path": str(path), "tag": "short", "seconds": 0.5}))
    until(lambda: _started(path, {"short"}))
    node.signal(signal.SIGINT)
    assert node.wait(timeout=10) == 0, node.stderr
    assert "shutting down" in node.stderr
    assert "Traceback" not in node.stderr and "KeyboardInterrupt" not in node.stderr
    done = client.sync.get_job(job.id)
    assert done is not None and done.state is JobState.COMPLETED


# -- several nodes -----------------------------------------------------------------------------


def test_job_inserted_by_one_node_runs_on_another(
    start_node: Callable[..., Node], client: Kerrera, tmp_path: Path
) -> None:
    path = tmp_path / "events"
    sender = start_node(queues="default:2", name="sender")
    receiver = start_node(queues="other:2", name="receiver")
    job = client.sync.insert(hand_over.new({"path": str(path), "tag": "h", "to_queue": "other"}))

    until(lambda: ("finish", "h-next", 1, "receiver") in read_events(path))
    events = read_events(path)
    assert ("finish", "h", 1, "sender") in events
    assert [e for e in events if e[1] == "h-next"] == [
        ("start", "h-next", 1, "receiver"),
        ("finish", "h-next", 1, "receiver"),
    ]
    assert client.sync.get_job(job.id).state is JobState.COMPLETED  # type: ignore[union-attr]
    for node in (sender, receiver):
        node.signal(signal.SIGTERM)
    for node in (sender, receiver):
        assert node.wait(timeout=10) == 0, node.stderr


# -- schema and migrations -----------------------------------------------------------------------


def test_no_migrate_refuses_an_empty_schema(
    run: Callable[..., Node], sql: Callable[..., list[tuple[Any, ...]]], prefix: str
) -> None:
    node = run("start", "--queues", "default:1", "--no-migrate")
    code = node.wait(timeout=15)
    assert code != 0
    assert "kerrera migrate" in node.stderr, node.stderr
    assert "Traceback" not in node.stderr, node.stderr
    # Refusing left nothing behind: not even the schema was created.
    assert sql("SELECT 1 FROM pg_namespace WHERE nspname = %s", (prefix,)) == []


def test_migrate_status_down_and_up_again(
    run: Callable[..., Node], start_node: Callable[..., Node],
    sql: Callable[..., list[tuple[Any, ...]]], prefix: str,
) -> None:  # fmt: skip
    def kerrera(*args: str) -> str:
        proc = run("migrate", *args)
        assert proc.wait(timeout=15) == 0, proc.stderr
        return proc.stdout

    def has_jobs_table() -> bool:
        return sql("SELECT to_regclass(%s) IS NOT NULL", (f'"{prefix}".oban_jobs',))[0][0]

    assert f"version 0 (latest {LATEST_VERSION})" in kerrera("--status")
    assert f"now at version {LATEST_VERSION}" in kerrera()
    assert f"version {LATEST_VERSION} (latest {LATEST_VERSION})" in kerrera("--status")
    assert has_jobs_table()
    assert "applied nothing" in kerrera()  # idempotent

    assert f"now at version {LATEST_VERSION - 1}" in kerrera("--down", "1")
    assert f"version {LATEST_VERSION - 1} (latest" in kerrera("--status")

    # An out-of-date schema is refused with --no-migrate, then accepted once migrated.
    refused = run("start", "--queues", "default:1", "--no-migrate")
    assert refused.wait(timeout=15) != 0
    assert "kerrera migrate" in refused.stderr
    assert f"now at version {LATEST_VERSION}" in kerrera()
    node = start_node(extra=("--no-migrate",))
    node.signal(signal.SIGTERM)
    assert node.wait(timeout=10) == 0, node.stderr

    assert "kept Oban's tables" in kerrera("--down", str(LATEST_VERSION))
    assert has_jobs_table()  # an Elixir node may use it: only --drop-oban-tables drops it
    assert "version 0 (latest" in kerrera("--status")


# -- a node that dies -----------------------------------------------------------------------


def test_jobs_of_a_killed_node_are_rescued_and_finish_elsewhere(
    start_node: Callable[..., Node], client: Kerrera, tmp_path: Path
) -> None:
    path = tmp_path / "events"
    fast = ("--heartbeat-interval", "0.2", "--producer-ttl", "2", "--rescue-interval", "0.2")
    victim = start_node(name="victim", extra=fast)
    job = client.sync.insert(traced.new({"path": str(path), "tag": "orphan", "seconds": 1}))
    until(lambda: _started(path, {"orphan"}))
    victim.proc.send_signal(signal.SIGKILL)  # no shutdown: the job stays executing
    victim.wait(timeout=10)
    assert client.sync.get_job(job.id).state is JobState.EXECUTING  # type: ignore[union-attr]

    survivor = start_node(name="survivor", extra=fast)
    until(
        lambda: client.sync.get_job(job.id).state is JobState.COMPLETED,  # type: ignore[union-attr]
        timeout=20,
    )
    done = client.sync.get_job(job.id)
    assert done is not None and done.meta["rescued"] == 1
    assert done.attempt == 2 and done.attempted_by[0] == "survivor"
    assert read_events(path) == [
        ("start", "orphan", 1, "victim"),
        ("start", "orphan", 2, "survivor"),
        ("finish", "orphan", 2, "survivor"),
    ]
    survivor.signal(signal.SIGTERM)
    assert survivor.wait(timeout=10) == 0, survivor.stderr
