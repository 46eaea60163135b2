#!/usr/bin/env python3
"""What composing jobs costs (not a test): per workflow step and per chain link, beside
plain jobs, measured in one run on one database.

  fan     N no-op jobs as plain jobs, then as one workflow (a root, N steps that depend
          on it, one step that depends on all of them): insert time and processing
          throughput of each, one node at concurrency C.
  line    L no-op jobs that must run one after another: a workflow of L steps (each
          depends on the one before), a chain of L links (`chain=` on the worker), and,
          as the plain baseline, jobs that each insert the next one. Reports seconds per
          step: the latency of one release, since nothing runs in parallel.

The database (`--db`, default kerrera_compose_bench) is dropped and recreated for each
measurement. Example:

  cd bench && python -m compose_bench --dsn postgresql://postgres@127.0.0.1:5432/postgres \\
      fan 20000 -c 50
  cd bench && python -m compose_bench line 500

(Run as a module: its workers must be importable by name, not defined in `__main__`.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from kerrera import Job, Kerrera, worker
from kerrera.core.context import current_app
from kerrera.core.workflow import Workflow


@worker(queue="bench", max_attempts=3)
async def noop(job: Job) -> None:
    """Does nothing."""


@worker(queue="bench", max_attempts=3)
async def relay(job: Job) -> None:
    """The plain baseline of a line: inserts the next job itself."""
    left = int(job.args["left"])
    if left > 1:
        await current_app().insert(relay.new({"left": left - 1}))


def _with_db(dsn: str, db: str) -> str:
    params = conninfo_to_dict(dsn)
    params["dbname"] = db
    return make_conninfo(**params)


def _fresh(dsn: str, db: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db}"')
    return _with_db(dsn, db)


def _unfinished(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM oban_jobs WHERE state NOT IN "
            "('completed', 'cancelled', 'discarded')"
        ).fetchone()
    return int(row[0]) if row else 0


async def _drain(dsn: str, conc: int, expect: int) -> float:
    """Start a node, time until nothing is unfinished and `expect` jobs completed."""
    app = Kerrera(dsn, queues={"bench": conc}, poll_interval=1.0)
    began = time.perf_counter()
    async with app:
        while True:
            if await asyncio.to_thread(_unfinished, dsn) == 0:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    row = conn.execute(
                        "SELECT count(*) FROM oban_jobs WHERE state = 'completed'"
                    ).fetchone()
                if row and int(row[0]) >= expect:
                    break
            await asyncio.sleep(0.02)
        took = time.perf_counter() - began
    return took


async def _insert(dsn: str, what: Any) -> float:
    client = Kerrera(dsn)
    async with client:
        began = time.perf_counter()
        if isinstance(what, Workflow):
            await client.insert(what)
        else:
            await client.insert_all(what)
        return time.perf_counter() - began


async def fan(args: argparse.Namespace) -> list[dict[str, Any]]:
    n, conc = args.n, args.concurrency
    out = []
    dsn = _fresh(args.dsn, args.db)
    ins = await _insert(dsn, [noop.new({"i": i}) for i in range(n + 2)])
    took = await _drain(dsn, conc, n + 2)
    out.append({"case": "plain jobs", "jobs": n + 2, "insert_s": ins, "process_s": took})
    dsn = _fresh(args.dsn, args.db)
    wf = Workflow(name="fan").add("root", noop.new({}))
    wf.add_many("wide", [noop.new({"i": i}) for i in range(n)], deps=["root"])
    wf.add("join", noop.new({}), deps=["wide"])
    ins = await _insert(dsn, wf)
    took = await _drain(dsn, conc, n + 2)
    out.append({"case": "workflow steps", "jobs": n + 2, "insert_s": ins, "process_s": took})
    return out


async def line(args: argparse.Namespace) -> list[dict[str, Any]]:
    n = args.n
    out = []
    dsn = _fresh(args.dsn, args.db)
    await _insert(dsn, [relay.new({"left": n})])
    took = await _drain(dsn, 10, n)
    out.append({"case": "plain: each job inserts the next", "jobs": n, "process_s": took})
    dsn = _fresh(args.dsn, args.db)
    wf = Workflow(name="line").add("s0", noop.new({}))
    for i in range(1, n):
        wf.add(f"s{i}", noop.new({}), deps=[f"s{i - 1}"])
    await _insert(dsn, wf)
    took = await _drain(dsn, 10, n)
    out.append({"case": "workflow: each step depends on the last", "jobs": n, "process_s": took})
    try:
        from kerrera.core.chain import Chain  # noqa: F401 (present once chains land)
    except ImportError:
        return out
    dsn = _fresh(args.dsn, args.db)
    await _insert(dsn, [linked.new({"i": i}) for i in range(n)])
    took = await _drain(dsn, 10, n)
    out.append({"case": "chain: one partition", "jobs": n, "process_s": took})
    return out


try:  # a chained worker, when chains exist in this version

    @worker(queue="bench", max_attempts=3, chain=True)
    async def linked(job: Job) -> None:
        """A chain link that does nothing."""
except (TypeError, ValueError):  # before chains existed
    linked = None  # type: ignore[assignment]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--db", default="kerrera_compose_bench")
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fan")
    f.add_argument("n", type=int)
    f.add_argument("-c", "--concurrency", type=int, default=50)
    li = sub.add_parser("line")
    li.add_argument("n", type=int)
    args = parser.parse_args(argv)
    results = asyncio.run(fan(args) if args.command == "fan" else line(args))
    for res in results:
        print(json.dumps(res))
        extra = ""
        if "insert_s" in res:
            extra = f"insert {res['jobs'] / res['insert_s']:,.0f} jobs/s, "
        per = res["process_s"] / res["jobs"]
        print(
            f"{res['case']:<45} {extra}process {res['jobs'] / res['process_s']:,.0f} jobs/s"
            f" ({per * 1000:.2f} ms per job)",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
