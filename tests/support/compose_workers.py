"""Workers for the batch and chain tests. The evidence is the jobs table (attempted_at,
completed_at, state), so node processes can be checked as well as in-process apps.

args: {"chain": key (the chain's partition), "sleep": seconds, "cancel": True (on the
first attempt only when "once" is also given), "fail_until": attempt that succeeds,
"log": a file that chain links append `start|end <chain> <seq>` lines to}

Chain links also note their start and end in `EVENTS`, in order (in-process nodes): the
order the links really ran in, free of the database clock (a transaction's `now()` is
taken when its statement arrives, which on a loaded machine can be some milliseconds
before the statement takes its snapshot).
"""

from __future__ import annotations

import asyncio
import os
import threading

from kerrera import Cancel, Job, Worker

#: (chain key, chain_seq, "start" | "end") of every link run in this process, in order.
EVENTS: list[tuple[str, int, str]] = []
_lock = threading.Lock()


def note(job: Job, event: str) -> None:
    """Record that a link starts or ends (and append it to its log file, if any: lines
    written with O_APPEND by several processes never interleave)."""
    key, seq = str(job.args.get("chain")), int(job.meta.get("chain_seq", 0))
    with _lock:
        EVENTS.append((key, seq, event))
    path = job.args.get("log")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{event} {key} {seq}\n".encode())
        finally:
            os.close(fd)


async def _link(job: Job) -> object:
    note(job, "start")
    try:
        return await _act(job)
    finally:
        note(job, "end")


async def _act(job: Job) -> object:
    a = job.args
    if a.get("sleep"):
        await asyncio.sleep(float(a["sleep"]))
    if a.get("cancel") and (not a.get("once") or job.attempt == 1):
        return Cancel("told to")
    if a.get("fail_until") and job.attempt < int(a["fail_until"]):
        raise RuntimeError(f"failing attempt {job.attempt}")
    return None


class Link(Worker, queue="chains", max_attempts=3, chain={"args": ["chain"]}):
    """A chain link partitioned by args["chain"]; a failed link lets the chain go on."""

    async def process(self, job: Job) -> object:
        return await _link(job)

    def backoff(self, job: Job) -> float:
        return 0.05


class HoldLink(
    Worker, queue="chains", max_attempts=3, chain={"args": ["chain"], "on_failure": "hold"}
):
    """A chain link whose failure holds its chain until an operator acts."""

    async def process(self, job: Job) -> object:
        return await _link(job)

    def backoff(self, job: Job) -> float:
        return 0.05


class Member(Worker, queue="batch", max_attempts=2):
    """A batch member."""

    async def process(self, job: Job) -> object:
        return await _act(job)

    def backoff(self, job: Job) -> float:
        return 0.05


class Callback(Worker, queue="callbacks"):
    """A batch callback: does nothing (the row is the evidence)."""

    async def process(self, job: Job) -> object:
        return None
