"""A scripted worker: its args choose what happens, and every run is recorded.

args: {"do": "ok" | "error" | "cancel" | "snooze" | "record" | "sleep" | "block" |
       "fail_until" | "exit", "seconds": float, "value": any, "times": int, "key": str}
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from kerrera import Cancel, Job, Record, Snooze, Worker, worker

RUNS: list[tuple[int, int, dict[str, Any]]] = []  # (job id, attempt, args)
_gauge = {"now": 0, "max": 0}
_gates: dict[str, asyncio.Event] = {}
_lock = threading.Lock()


def reset() -> None:
    """Forget previous runs (called before each test)."""
    RUNS.clear()
    _gauge.update(now=0, max=0)
    _gates.clear()


def release_all() -> None:
    """Let every blocked job finish."""
    for gate in _gates.values():
        gate.set()


def gate(key: str) -> asyncio.Event:
    """The event a `block` job with this key waits for."""
    return _gates.setdefault(key, asyncio.Event())


def max_concurrency() -> int:
    """The most jobs that ever ran at once in this process since `reset`."""
    return _gauge["max"]


class Scripted(Worker, queue="default", max_attempts=3):
    """Does what its args say; retries after 0.1 s so tests need not wait for backoff."""

    async def process(self, job: Job) -> object:
        with _lock:
            RUNS.append((job.id or 0, job.attempt, dict(job.args)))
            _gauge["now"] += 1
            _gauge["max"] = max(_gauge["max"], _gauge["now"])
        try:
            return await _act(job)
        finally:
            with _lock:
                _gauge["now"] -= 1

    def backoff(self, job: Job) -> float:
        return 0.1


async def _act(job: Job) -> object:
    args = job.args
    action = args.get("do", "ok")
    if action == "error":
        raise RuntimeError(args.get("message", "scripted failure"))
    if action == "fail_until":
        if job.attempt < args["times"]:
            raise ValueError(f"failing attempt {job.attempt}")
        return None
    if action == "cancel":
        return Cancel(args.get("reason", "scripted cancel"))
    if action == "snooze":
        return Snooze(args.get("seconds", 0)) if job.attempt == 1 else None
    if action == "record":
        return Record(args.get("value"))
    if action == "sleep":
        await asyncio.sleep(args.get("seconds", 0.05))
        return None
    if action == "block":
        await gate(args["key"]).wait()
        return None
    if action == "exit":
        raise SystemExit(3)
    return None


class Slow(Worker, queue="default", max_attempts=2, timeout=0.2):
    """Sleeps longer than its timeout."""

    async def process(self, job: Job) -> object:
        await asyncio.sleep(args_seconds(job))
        return None

    def backoff(self, job: Job) -> float:
        return 0.1


def args_seconds(job: Job) -> float:
    return float(job.args.get("seconds", 5))


@worker(queue="default", max_attempts=2)
def sync_job(job: Job) -> object:
    """A sync worker: runs in the thread pool."""
    with _lock:
        RUNS.append((job.id or 0, job.attempt, dict(job.args)))
    time.sleep(float(job.args.get("seconds", 0.01)))
    if job.args.get("do") == "error":
        raise KeyError("sync failure")
    return Record({"thread": threading.current_thread().name})


class Awkward(Worker, queue="default", max_attempts=2):
    """Outcomes that the database could refuse if they were written as they are."""

    async def process(self, job: Job) -> object:
        what = job.args["what"]
        if what == "nul_error":
            raise RuntimeError("bad \x00 byte")
        if what == "nul_record":
            return Record({"text": "a\x00b"})
        if what == "snooze_forever":
            return Snooze(1e300) if job.attempt == 1 else None
        raise RuntimeError("fails, with a backoff that is not a number")

    def backoff(self, job: Job) -> float:
        return float("nan") if job.args["what"] == "nan_backoff" else 0.05


class Transactional(Worker, queue="default", max_attempts=3):
    """Writes a row and completes itself in the same transaction; may then fail."""

    async def process(self, job: Job) -> object:
        import psycopg

        from kerrera import current_app

        app = current_app()
        conn = await psycopg.AsyncConnection.connect(app.dsn)
        async with conn, conn.transaction():
            await conn.execute(
                f'INSERT INTO "{app.config.prefix}".effects (job_id) VALUES (%s)', (job.id,)
            )
            owned = await app.complete_job(job, conn=conn)
            RUNS.append((job.id or 0, job.attempt, {"owned": owned}))
            if job.args.get("abort"):
                raise RuntimeError("the rest of the work failed")
        if job.args.get("crash_after_commit"):
            raise RuntimeError("failed after committing: the job stays completed")
        return None


class NeedsArgs(Worker, queue="default", max_attempts=1):
    """A worker class that cannot be built without arguments."""

    def __init__(self, token: str) -> None:
        self.token = token

    async def process(self, job: Job) -> object:  # pragma: no cover - never built
        return None


class Misbehaving(Worker, queue="default", max_attempts=2):
    """Raises what a job should not: its own CancelledError, or StopIteration (sync)."""

    async def process(self, job: Job) -> object:
        RUNS.append((job.id or 0, job.attempt, dict(job.args)))
        if job.args["what"] == "cancelled_error":
            raise asyncio.CancelledError()
        if job.args["what"] == "snooze_with_odd_meta":
            return Snooze(0) if job.attempt == 1 else None
        return None

    def backoff(self, job: Job) -> float:
        return 0.05


@worker(queue="default", max_attempts=1)
def stop_iteration(job: Job) -> object:
    """A sync worker whose code lets StopIteration escape."""
    return next(iter([]))


@worker(queue="default", max_attempts=1, timeout=1.5)
def slow_sync(job: Job) -> object:
    """Takes 0.6 s of its 1.5 s timeout, in a thread."""
    time.sleep(0.6)
    return None
