"""Workers run by the acceptance tests' nodes: `kerrera start --module acceptance.nodeworkers`
subprocesses, and in-process apps.

The subprocess workers leave their evidence outside the node: each appends one line per
event to the file named in its args, `<event> <tag> <attempt> <node>`, where event is
`start`, `finish` or `cancelled`. Lines are short and written with O_APPEND, so lines of
concurrent jobs (even of different processes) never interleave.

args: {"path": str, "tag": str, "seconds": float, ...}
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

from kerrera import Job, current_app, worker


def note(job: Job, event: str) -> None:
    """Append `<event> <tag> <attempt> <node>` to the job's evidence file."""
    line = f"{event} {job.args['tag']} {job.attempt} {current_app().node}\n"
    fd = os.open(job.args["path"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_events(path: Path) -> list[tuple[str, str, int, str]]:
    """The evidence file as (event, tag, attempt, node) tuples, in write order."""
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        event, tag, attempt, node = line.split(" ", 3)
        events.append((event, tag, int(attempt), node))
    return events


@worker(queue="default", max_attempts=3)
async def traced(job: Job) -> None:
    """Notes its start, sleeps `seconds` on the loop, notes its finish (or that it was
    cancelled, which is how shutdown interrupts an async job)."""
    note(job, "start")
    try:
        await asyncio.sleep(float(job.args.get("seconds", 0)))
    except asyncio.CancelledError:
        note(job, "cancelled")
        raise
    note(job, "finish")


@worker(queue="default", max_attempts=3)
def traced_sync(job: Job) -> None:
    """Like `traced` but blocking, on the node's thread pool: shutdown cannot interrupt
    it, only abandon it (its thread is a daemon)."""
    note(job, "start")
    time.sleep(float(job.args.get("seconds", 0)))
    note(job, "finish")


@worker(queue="default", max_attempts=3)
async def hand_over(job: Job) -> None:
    """From inside a running job, inserts a `traced` job into `args["to_queue"]` with the
    same path and tag `<tag>-next`, through the node's own app (`current_app()`)."""
    note(job, "start")
    follow = traced.new(
        {"path": job.args["path"], "tag": f"{job.args['tag']}-next", "seconds": 0},
        queue=job.args["to_queue"],
    )
    await current_app().insert(follow)
    note(job, "finish")


# -- in-process nodes -----------------------------------------------------------------------

#: (job id, attempt) of every run of `counted` in this process, in start order.
RUNS: list[tuple[int, int]] = []
_runs_lock = threading.Lock()


def reset_runs() -> None:
    """Forget the runs of previous tests."""
    with _runs_lock:
        RUNS.clear()


@worker(queue="default", max_attempts=3)
async def counted(job: Job) -> Any:
    """Records its run in `RUNS`, then sleeps `seconds` (default 0)."""
    with _runs_lock:
        RUNS.append((job.id or 0, job.attempt))
    await asyncio.sleep(float(job.args.get("seconds", 0)))
    return None


@worker(queue="cron", max_attempts=1)
async def ticked(job: Job) -> None:
    """A cron target that does nothing: the jobs table is the evidence."""
