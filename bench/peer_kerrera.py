"""Peer benchmark adapter: Kerrera.

Runs Kerrera through the shared peer harness (`peerbench.py` / `run.py`), so it
is timed and counted by exactly the same code as the other job queues.  The
harness directory must be importable (run.py puts it on PYTHONPATH); the
interpreter running this file needs kerrera, psycopg and (optionally) uvloop.

Public APIs used (the fastest documented ones):
  install  Kerrera(dsn, queues={}).migrate()   -- creates the oban_jobs schema
  insert   Kerrera.insert_all([...])           -- one round trip per batch
  enqueue  Kerrera.insert(job)                 -- single job, used for latency
  worker   Kerrera(dsn, queues={"bench": C}, node=...) started in-process;
           the job body only calls the harness's on_job(args).

Finished jobs are kept (state 'completed'), as with oban; `remaining_sql`
counts every job that is not in a terminal state.

Example (from the harness directory):
  PYTHONPATH=<peers dir> <kerrera venv>/bin/python peer_kerrera.py setup
  PYTHONPATH=<peers dir> <kerrera venv>/bin/python peer_kerrera.py insert 50000
  PYTHONPATH=<peers dir> <kerrera venv>/bin/python peer_kerrera.py process 50000 -c 100
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version

import peerbench

from kerrera import Job, Kerrera, worker

QUEUE = "bench"
NODE = os.environ.get("PEER_KERRERA_NODE", "bench-node")
# The harness calls on_job(args) at the start of each job body; the worker
# below is defined at import time, so the callback is swapped in here.
ON_JOB = [lambda _args: None]


# Named: this script inserts in one run and serves in another, so `__main__.noop` would
# be refused at insert; each run registers the name.
@worker(queue=QUEUE, max_attempts=1, name="peer_kerrera.noop")
async def noop(job: Job) -> None:
    ON_JOB[0](job.args)


def _kerrera_version() -> str:
    try:
        return _dist_version("kerrera")
    except PackageNotFoundError:  # running from a source tree without metadata
        import kerrera

        return getattr(kerrera, "__version__", "?")


class KerreraAdapter(peerbench.Adapter):
    name = "peer_kerrera"
    library = "kerrera"
    version = _kerrera_version()
    remaining_sql = (
        "SELECT count(*) FROM oban_jobs WHERE state NOT IN ('completed','discarded','cancelled')"
    )

    # --- schema ----------------------------------------------------------
    async def install(self, dsn):
        app = Kerrera(dsn=dsn, queues={})
        await app.migrate()
        # migrate() may open a pool lazily; close whatever it opened.
        await _close_quietly(app)

    # --- producer side -----------------------------------------------------
    async def open_client(self, dsn):
        app = Kerrera(dsn=dsn, queues={})  # client only: no queue runs
        await app.start()
        return app

    async def close_client(self, client):
        await client.stop()

    async def insert(self, client, n, batch):
        for start in range(0, n, batch):
            k = min(batch, n - start)
            await client.insert_all([noop.new({}) for _ in range(k)])

    async def enqueue_one(self, client, args):
        await client.insert(noop.new(args))

    # --- consumer side -----------------------------------------------------
    def describe_concurrency(self, c):
        return f"queues={{'{QUEUE}': {c}}}, node={NODE!r}"

    async def run_worker(self, dsn, concurrency, on_job, ready, stop):
        ON_JOB[0] = on_job
        app = Kerrera(dsn=dsn, queues={QUEUE: concurrency}, node=NODE)
        await app.start()
        try:
            ready.set()
            await stop.wait()
        finally:
            await app.stop()


async def _close_quietly(app) -> None:
    """Release resources of an app that was only used for migrate()."""
    with contextlib.suppress(Exception):  # never started: nothing to release
        await app.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    peerbench.main(KerreraAdapter())
