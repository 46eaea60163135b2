"""Chunk workers for tests/test_chunks.py: every chunk run is recorded, and a job's args
choose its outcome ({"do": "ok" | "fail" | "fail_text" | "snooze" | "cancel" | "raise"})."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from kerrera import Job
from kerrera.core.chunk import ChunkResult, ChunkWorker, chunk_worker

#: Every chunk that ran: the (id, args) of its jobs, in the order given.
CHUNKS: list[list[tuple[int, dict[str, Any]]]] = []
#: Chunks of `Blocking` wait on this until a test sets it.
GATE: dict[str, asyncio.Event] = {}


def reset() -> None:
    """Forget earlier runs (before each test)."""
    CHUNKS.clear()
    GATE.clear()


def gate() -> asyncio.Event:
    """The event `Blocking` chunks wait for."""
    return GATE.setdefault("gate", asyncio.Event())


def _record(jobs: list[Job]) -> None:
    CHUNKS.append([(job.id or 0, dict(job.args)) for job in jobs])


class Hundred(ChunkWorker, queue="chunks", size=100, timeout=2.0):
    """Chunks of up to 100, waiting up to 2 s to fill."""

    async def process(self, jobs: list[Job]) -> object:
        _record(jobs)
        return None


class Quick(ChunkWorker, queue="chunks", size=100, timeout=0.2):
    """Chunks that run 0.2 s after their first job, however few they hold."""

    async def process(self, jobs: list[Job]) -> object:
        _record(jobs)
        return None


class ByAccount(ChunkWorker, queue="chunks", size=8, timeout=0.2, by=["account_id"]):
    """Chunks of one account each."""

    async def process(self, jobs: list[Job]) -> object:
        _record(jobs)
        return None


class Outcomes(ChunkWorker, queue="chunks", size=50, timeout=0.3, max_attempts=3):
    """Ends each job as its args say."""

    async def process(self, jobs: list[Job]) -> object:
        _record(jobs)
        if any(job.args.get("do") == "raise" for job in jobs):
            raise RuntimeError("the whole chunk failed")
        failed: dict[int, BaseException | str] = {}
        for job in jobs:
            if job.args.get("do") == "fail":
                failed[job.id or 0] = ValueError(f"bad row {job.args.get('n')}")
            elif job.args.get("do") == "fail_text":
                failed[job.id or 0] = "rejected by the API"
        return ChunkResult(
            failed=failed,
            snoozed={j: 30 for j in jobs if j.args.get("do") == "snooze"},
            cancelled={j.id or 0: "gone" for j in jobs if j.args.get("do") == "cancel"},
        )

    def backoff(self, job: Job) -> float:
        return 30.0


class Stray(ChunkWorker, queue="chunks", size=10, timeout=0.2):
    """Returns a result naming a job that is not in its chunk."""

    async def process(self, jobs: list[Job]) -> object:
        _record(jobs)
        return ChunkResult(failed={-1: "not mine"})


class Blocking(ChunkWorker, queue="chunks", size=10, timeout=0.2):
    """Records its chunk, then waits for the gate."""

    async def process(self, jobs: list[Job]) -> object:
        _record(jobs)
        await gate().wait()
        return None


class Waiting(ChunkWorker, queue="chunks", size=100, timeout=600.0):
    """Fills for ten minutes: in a test it never runs unless full."""

    async def process(self, jobs: list[Job]) -> object:
        _record(jobs)
        return None


@chunk_worker(queue="chunks", size=5, timeout=0.2)
async def summed(jobs: list[Job]) -> object:
    """A function chunk worker."""
    _record(jobs)
    return None


# -- for real node processes (`kerrera start --module support.chunked`) --------------------
def _note(jobs: list[Job], event: str) -> None:
    """Append `<event> <tag> <attempt> <node>` per job to the file in the jobs' args, in
    one write (O_APPEND: lines of several processes never interleave)."""
    from kerrera import current_app

    node = current_app().node
    lines = "".join(f"{event} {j.args['tag']} {j.attempt} {node}\n" for j in jobs)
    fd = os.open(jobs[0].args["path"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, lines.encode())
    finally:
        os.close(fd)


class Traced(ChunkWorker, queue="chunks", size=10, timeout=0.2):
    """Notes the start of each job of its chunk, sleeps `seconds`, notes each finish."""

    async def process(self, jobs: list[Job]) -> object:
        _note(jobs, "start")
        await asyncio.sleep(float(jobs[0].args.get("seconds", 0)))
        _note(jobs, "finish")
        return None
