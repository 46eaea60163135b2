#!/usr/bin/env python3
"""Kerrera's own benchmark (not a test).

Every command works in a dedicated database (``--db``, default ``kerrera_bench``)
that it drops and recreates, on the server named by ``--dsn`` (a maintenance
DSN: any database on that server, used only for DROP/CREATE DATABASE and for
reading pg_stat_database).  Nothing else should use the server meanwhile.

Commands
  insert N [--batch B[,B...]]
      bulk insert N no-op jobs with Kerrera.insert_all, B jobs per call, from
      a client whose pool is already open; reports jobs/s.
  process N [--concurrency C[,C...]]
      pre-insert N no-op jobs (untimed), VACUUM ANALYZE + CHECKPOINT, then
      start one node in this process and time from just before start() until
      the database shows 0 unfinished jobs (acks durable, not just bodies
      run).  Reports jobs/s, transactions per job (pg_stat_database
      xact_commit + xact_rollback delta, our own polling subtracted, read
      after every backend of the database exited), WAL bytes per job and CPU.
  latency [--rate R] [--seconds S] [--concurrency C]
      a node runs in a child process; the parent inserts one job at a time at
      a steady R jobs/s; latency = job body start (child) minus the time
      taken just before the insert call (parent), both CLOCK_MONOTONIC, which
      is system-wide on Linux.  Reports p50/p95/p99/max.
  backlog [--sizes 10000,100000,1000000] [--concurrency C] [--history H]
      like process, for each backlog size, with the backlog written by one
      INSERT ... SELECT generate_series (fast; only processing is timed).
      Shows whether throughput stays flat as the backlog grows; also reports
      the body rate per tenth of the backlog.  --history H adds H completed
      jobs first (a table that keeps history).

Output: one JSON object per result on stdout (also appended to --out FILE if
given); a human-readable summary on stderr.

Examples
  export KERRERA_BENCH_DSN=postgresql://postgres@127.0.0.1:5432/postgres
  python bench/bench.py process 20000 -c 10,100
  python bench/bench.py --dsn postgresql://postgres@localhost/postgres insert 100000 -b 100,1000
  python bench/bench.py latency --rate 50 --seconds 10
  python bench/bench.py backlog --sizes 10000,100000,1000000 -c 100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from kerrera import Job, Kerrera, worker

DEFAULT_DSN = os.environ.get("KERRERA_BENCH_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
QUEUE = "bench"
NODE = "bench-node"
UNFINISHED = ("available", "suspended", "scheduled", "executing", "retryable")
# IN-list rather than NOT IN (terminal states) so the (state, ...) index can serve it
# on tables with a large completed history.
REMAINING_SQL = (
    "SELECT count(*) FROM oban_jobs WHERE state IN ("
    + ", ".join(f"'{s}'" for s in UNFINISHED)
    + ")"
)

# The job body calls ON_JOB[0](args); each command installs its own callback.
ON_JOB: list[Any] = [lambda _args: None]


# Named: this script inserts in one run and serves in another, so `__main__.noop` would
# be refused at insert; each run registers the name.
@worker(queue=QUEUE, max_attempts=1, name="bench.noop")
async def noop(job: Job) -> None:
    ON_JOB[0](job.args)


def log(*a: Any) -> None:
    print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# environment


def install_loop(choice: str) -> str:
    if choice in ("auto", "uvloop"):
        try:
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            return "uvloop"
        except ImportError:
            if choice == "uvloop":
                raise
    return "asyncio"


def with_db(dsn: str, db: str) -> str:
    """The same server/credentials as `dsn`, database `db` (URL or key=value form)."""
    if dsn.startswith(("postgres://", "postgresql://")):
        parts = urlsplit(dsn)
        return urlunsplit(parts._replace(path="/" + db))
    return make_conninfo(dsn, dbname=db)


def kerrera_version() -> str:
    try:
        from importlib.metadata import version

        return version("kerrera")
    except Exception:
        import kerrera

        return str(getattr(kerrera, "__version__", "?"))


class Bench:
    def __init__(self, args: argparse.Namespace, loop_name: str) -> None:
        self.args = args
        self.loop_name = loop_name
        self.admin_dsn = args.dsn
        self.db = args.db
        self.dsn = with_db(args.dsn, args.db)
        admin_db = conninfo_to_dict(args.dsn).get("dbname")
        if admin_db == self.db:
            raise SystemExit(
                f"--dsn must name a database other than --db ({self.db}): it is dropped"
            )
        self.results: list[dict[str, Any]] = []

    # --- database helpers ----------------------------------------------------
    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.admin_dsn, autocommit=True)

    def recreate_db(self) -> None:
        with self.admin() as c:
            c.execute(f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
            c.execute(f'CREATE DATABASE "{self.db}"')

    async def migrate(self) -> None:
        app = Kerrera(dsn=self.dsn, queues={})
        await app.migrate()
        with contextlib.suppress(Exception):  # migrate() alone may leave nothing to stop
            await app.stop()

    def fresh_db(self) -> None:
        self.recreate_db()
        asyncio.run(self.migrate())

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until no backend is connected to the bench DB (its stats are then flushed)."""
        deadline = time.monotonic() + timeout
        with self.admin() as c:
            while time.monotonic() < deadline:
                (n,) = c.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (self.db,)
                ).fetchone()
                if n == 0:
                    return
                time.sleep(0.05)
        log(f"warning: backends still connected to {self.db} after {timeout}s")

    def snapshot(self) -> dict[str, int]:
        with self.admin() as c:
            c.execute("SELECT pg_stat_clear_snapshot()")
            commit, rollback = c.execute(
                "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = %s",
                (self.db,),
            ).fetchone()
            (wal,) = c.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint"
            ).fetchone()
        return {"xacts": int(commit) + int(rollback), "rollback": int(rollback), "wal": int(wal)}

    def vacuum_checkpoint(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            c.execute("VACUUM ANALYZE")
        with self.admin() as c:
            c.execute("CHECKPOINT")

    def remaining(self) -> int:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            (n,) = c.execute(REMAINING_SQL).fetchone()
        return int(n)

    # --- pre-inserting (untimed) ---------------------------------------------
    def preinsert_sql(self, n: int, history: int = 0) -> None:
        """Write n available no-op jobs (and `history` completed ones) with generate_series."""
        proto = noop.new({})
        cols = "state, queue, worker, args, max_attempts, priority"
        with psycopg.connect(self.dsn, autocommit=True) as c:
            if history:
                c.execute(
                    f"""INSERT INTO oban_jobs ({cols}, attempt, attempted_at, completed_at)
                        SELECT 'completed', %s, %s, '{{}}'::jsonb, %s, %s, 1,
                               timezone('UTC', now()), timezone('UTC', now())
                        FROM generate_series(1, %s)""",
                    (proto.queue, proto.worker, proto.max_attempts, proto.priority, history),
                )
            c.execute(
                f"""INSERT INTO oban_jobs ({cols})
                    SELECT 'available', %s, %s, '{{}}'::jsonb, %s, %s
                    FROM generate_series(1, %s)""",
                (proto.queue, proto.worker, proto.max_attempts, proto.priority, n),
            )

    def preinsert_api(self, n: int, batch: int = 5000) -> None:
        async def go() -> None:
            app = Kerrera(dsn=self.dsn, queues={})
            await app.start()
            try:
                for start in range(0, n, batch):
                    k = min(batch, n - start)
                    await app.insert_all([noop.new({}) for _ in range(k)])
            finally:
                await app.stop()

        asyncio.run(go())

    # --- output ----------------------------------------------------------------
    def emit(self, res: dict[str, Any]) -> None:
        res = {
            "bench": res.pop("bench"),
            **res,
            "loop": self.loop_name,
            "kerrera": kerrera_version(),
        }
        self.results.append(res)
        line = json.dumps(res)
        print(line, flush=True)
        if self.args.out:
            with open(self.args.out, "a") as f:
                f.write(line + "\n")

    # --- commands ---------------------------------------------------------------
    def cmd_insert(self) -> None:
        a = self.args
        for batch in a.batch:
            for rep in range(1, a.reps + 1):
                b = batch or a.n
                self.fresh_db()
                with self.admin() as c:
                    c.execute("CHECKPOINT")

                async def go(b: int) -> float:
                    app = Kerrera(dsn=self.dsn, queues={})
                    await app.start()
                    try:
                        t0 = time.perf_counter()
                        for start in range(0, a.n, b):
                            k = min(b, a.n - start)
                            await app.insert_all([noop.new({}) for _ in range(k)])
                        return time.perf_counter() - t0
                    finally:
                        await app.stop()

                secs = asyncio.run(go(b))
                left = self.remaining()
                if left != a.n:
                    log(f"warning: expected {a.n} jobs after insert, found {left}")
                self.emit(
                    {
                        "bench": "insert",
                        "rep": rep,
                        "jobs": a.n,
                        "batch": b,
                        "seconds": round(secs, 4),
                        "jobs_per_s": round(a.n / secs, 1),
                    }
                )

    def timed_process(self, n: int, conc: int, deciles: bool = False) -> dict[str, Any]:
        """Process the n unfinished jobs already in the DB with one node; see module doc."""
        left = self.remaining()
        if left != n:
            raise SystemExit(f"expected {n} unfinished jobs in {self.db}, found {left}")
        self.vacuum_checkpoint()
        self.wait_idle()
        before = self.snapshot()
        state: dict[str, Any] = {"count": 0, "polls": 0, "marks": []}
        limit = float(self.args.timeout)
        marks_at = {max(1, (n * k) // 10): k for k in range(1, 11)} if deciles else {}

        async def go() -> tuple[float, float]:
            done = asyncio.Event()
            perf = time.perf_counter

            def on_job(_args: Any) -> None:
                state["count"] += 1
                c = state["count"]
                if c in marks_at:
                    state["marks"].append(perf())
                if c >= n:
                    done.set()

            ON_JOB[0] = on_job
            mon = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
            app = Kerrera(dsn=self.dsn, queues={QUEUE: conc}, node=NODE)
            state["cpu0"], state["m0"] = self_cpu(), machine_cpu()
            t0 = perf()
            state["t0"] = t0
            await app.start()
            try:
                try:
                    await asyncio.wait_for(done.wait(), limit)
                except TimeoutError:
                    raise SystemExit(
                        f"only {state['count']} of {n} job bodies ran within {limit:g} s"
                    ) from None
                t_bodies = perf() - t0
                while True:
                    cur = await mon.execute(REMAINING_SQL)
                    state["polls"] += 1
                    (left,) = await cur.fetchone()  # type: ignore[misc]
                    if left == 0:
                        break
                    if perf() - t0 > limit:
                        raise SystemExit(f"{left} jobs still unfinished after {limit:g} s")
                    await asyncio.sleep(0.005)
                secs = perf() - t0
                state["cpu1"], state["m1"] = self_cpu(), machine_cpu()
            finally:
                await mon.close()
                await asyncio.wait_for(app.stop(), 60)
            return secs, t_bodies

        secs, t_bodies = asyncio.run(go())
        self.wait_idle()
        time.sleep(0.2)
        after = self.snapshot()
        xacts = after["xacts"] - before["xacts"] - state["polls"]
        worker_cpu = state["cpu1"] - state["cpu0"]
        busy = state["m1"][0] - state["m0"][0]
        total = state["m1"][1] - state["m0"][1]
        res: dict[str, Any] = {
            "jobs": n,
            "concurrency": conc,
            "seconds": round(secs, 4),
            "jobs_per_s": round(n / secs, 1),
            "bodies_done_s": round(t_bodies, 4),
            "xacts_per_job": round(xacts / n, 3),
            "rollbacks": after["rollback"] - before["rollback"],
            "wal_bytes_per_job": round((after["wal"] - before["wal"]) / n, 1),
            "worker_cpu_ms_per_job": round(worker_cpu * 1000 / n, 3),
            "other_cpu_ms_per_job": round((busy - worker_cpu) * 1000 / n, 3),
            "machine_busy_pct": round(100 * busy / total, 1) if total else None,
        }
        if deciles and len(state["marks"]) == 10:
            prev_t, prev_c, rates = state["t0"], 0, []
            for (c, _k), t in zip(sorted(marks_at.items()), state["marks"], strict=True):
                rates.append(round((c - prev_c) / (t - prev_t), 1) if t > prev_t else None)
                prev_t, prev_c = t, c
            res["body_rate_per_tenth"] = rates
        return res

    def cmd_process(self) -> None:
        a = self.args
        for conc in a.concurrency:
            for rep in range(1, a.reps + 1):
                self.fresh_db()
                if a.preinsert == "sql":
                    self.preinsert_sql(a.n)
                else:
                    self.preinsert_api(a.n)
                res = self.timed_process(a.n, conc)
                self.emit({"bench": "process", "rep": rep, **res})

    def cmd_backlog(self) -> None:
        a = self.args
        for size in a.sizes:
            for rep in range(1, a.reps + 1):
                self.fresh_db()
                t = time.perf_counter()
                self.preinsert_sql(size, a.history)
                log(f"backlog {size:,}: pre-inserted in {time.perf_counter() - t:.1f}s (untimed)")
                res = self.timed_process(size, a.concurrency[0], deciles=True)
                self.emit(
                    {"bench": "backlog", "rep": rep, "backlog": size, "history": a.history, **res}
                )

    def cmd_latency(self) -> None:
        a = self.args
        for rep in range(1, a.reps + 1):
            self.fresh_db()
            self.emit({"bench": "latency", "rep": rep, **self.one_latency()})

    def one_latency(self) -> dict[str, Any]:
        a = self.args
        total = round(a.rate * a.seconds)
        fd, out = tempfile.mkstemp(prefix="kerrera-lat-", suffix=".json")
        os.close(fd)
        child = subprocess.Popen(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--dsn",
                self.admin_dsn,
                "--db",
                self.db,
                "--loop",
                a.loop,
                "_worker",
                "--concurrency",
                str(a.concurrency[0]),
                "--records",
                out,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None and child.stdin is not None
            line = child.stdout.readline()
            if line.strip() != "READY":
                raise SystemExit(f"latency worker did not start: {line!r}")

            async def drained(mon: psycopg.AsyncConnection[Any], timeout: float) -> bool:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    cur = await mon.execute(REMAINING_SQL)
                    (left,) = await cur.fetchone()  # type: ignore[misc]
                    if left == 0:
                        return True
                    await asyncio.sleep(0.02)
                return False

            async def go() -> tuple[list[float], float, bool]:
                app = Kerrera(dsn=self.dsn, queues={})
                await app.start()
                mon = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
                enq: list[float] = []
                try:
                    for _ in range(5):  # warm-up, excluded
                        await app.insert(noop.new({"t": time.monotonic(), "w": 1}))
                    if not await drained(mon, 30):
                        raise SystemExit("warm-up jobs were not processed within 30 s")
                    t_start = time.monotonic()
                    for i in range(total):
                        delay = t_start + i / a.rate - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)
                        t = time.monotonic()
                        await app.insert(noop.new({"t": t}))
                        enq.append(time.monotonic() - t)
                    t_sent = time.monotonic() - t_start
                    ok = await drained(mon, 60)
                finally:
                    await mon.close()
                    await app.stop()
                return enq, t_sent, ok

            enq, t_sent, ok = asyncio.run(go())
        finally:
            if child.stdin:
                child.stdin.close()
            child.wait(timeout=90)
        with open(out) as f:
            recs = json.load(f)
        os.unlink(out)
        lat = sorted((s - t) * 1000.0 for t, s, w in recs if not w)
        enq_ms = sorted(d * 1000.0 for d in enq)

        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 2)

        return {
            "rate": a.rate,
            "seconds": a.seconds,
            "worker_concurrency": a.concurrency[0],
            "sent": total,
            "received": len(lat),
            "achieved_rate": round(total / t_sent, 1) if t_sent else None,
            "drained": ok,
            "p50_ms": r(pct(lat, 50)),
            "p95_ms": r(pct(lat, 95)),
            "p99_ms": r(pct(lat, 99)),
            "max_ms": r(lat[-1] if lat else None),
            "mean_ms": r(statistics.fmean(lat) if lat else None),
            "insert_call_p50_ms": r(pct(enq_ms, 50)),
            "insert_call_p99_ms": r(pct(enq_ms, 99)),
        }

    def cmd_worker(self) -> None:
        """Child of `latency`: run a node until stdin closes; dump (t_insert, t_start, warmup)."""
        a = self.args
        records: list[tuple[float, float, int]] = []

        def on_job(args: dict[str, Any]) -> None:
            records.append((args.get("t", 0.0), time.monotonic(), args.get("w", 0)))

        async def go() -> None:
            ON_JOB[0] = on_job
            app = Kerrera(dsn=self.dsn, queues={QUEUE: a.concurrency}, node=NODE)
            await app.start()
            try:
                print("READY", flush=True)
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, sys.stdin.read)  # parent closes stdin to stop us
            finally:
                await asyncio.wait_for(app.stop(), 60)

        asyncio.run(go())
        with open(a.records, "w") as f:
            json.dump(records, f)

    # --- summary -------------------------------------------------------------------
    def summary(self) -> None:
        if not self.results:
            return
        log("")
        log(
            f"kerrera {kerrera_version()}, {self.loop_name}, Python {platform.python_version()}, "
            f"{os.cpu_count()} cores, database {self.db}"
        )
        for r in self.results:
            b = r["bench"]
            if b == "insert":
                log(
                    f"  insert   {r['jobs']:>9,} jobs, batch {r['batch']:>7,}: "
                    f"{r['jobs_per_s']:>10,.0f} jobs/s  ({r['seconds']:.2f} s)"
                )
            elif b in ("process", "backlog"):
                head = (
                    f"  process  {r['jobs']:>9,} jobs, C={r['concurrency']:<4}"
                    if b == "process"
                    else f"  backlog  {r['backlog']:>9,} jobs, C={r['concurrency']:<4}"
                )
                log(
                    f"{head}: {r['jobs_per_s']:>10,.0f} jobs/s  ({r['seconds']:.2f} s), "
                    f"{r['xacts_per_job']:.3f} xacts/job, {r['wal_bytes_per_job']:,.0f} WAL B/job, "
                    f"worker CPU {r['worker_cpu_ms_per_job']:.3f} ms/job"
                )
                if r.get("body_rate_per_tenth"):
                    log(
                        "           body jobs/s per tenth: "
                        + " ".join(f"{x:,.0f}" if x else "-" for x in r["body_rate_per_tenth"])
                    )
            elif b == "latency":
                log(
                    f"  latency  {r['rate']:g} jobs/s for {r['seconds']:g} s, "
                    f"C={r['worker_concurrency']}: p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms, "
                    f"p99 {r['p99_ms']} ms, max {r['max_ms']} ms ({r['received']}/{r['sent']} "
                    f"received; insert call p50 {r['insert_call_p50_ms']} ms)"
                )


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU-seconds of the whole machine, from /proc/stat (Linux)."""
    try:
        with open("/proc/stat") as f:
            vals = [int(x) for x in f.readline().split()[1:9]]
    except OSError:
        return 0.0, 0.0
    hz = os.sysconf("SC_CLK_TCK")
    idle = vals[3] + vals[4]
    return (sum(vals) - idle) / hz, sum(vals) / hz


def pct(vals: list[float], p: float) -> float | None:
    if not vals:
        return None
    k = (len(vals) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(vals) - 1)
    return vals[lo] + (vals[hi] - vals[lo]) * (k - lo)


def int_list(s: str) -> list[int]:
    return [int(x.replace("_", "")) for x in s.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--dsn",
        default=DEFAULT_DSN,
        help="maintenance DSN of the server (default: $KERRERA_BENCH_DSN, else %(default)s)",
    )
    p.add_argument(
        "--db",
        default=os.environ.get("KERRERA_BENCH_DB", "kerrera_bench"),
        help="benchmark database, DROPPED and recreated (default: %(default)s)",
    )
    p.add_argument(
        "--loop",
        choices=("auto", "uvloop", "asyncio"),
        default="auto",
        help="event loop (auto: uvloop if installed)",
    )
    p.add_argument("--out", help="also append the JSON lines to this file")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{insert,process,latency,backlog}")

    pi = sub.add_parser("insert", help="bulk insert N jobs with insert_all")
    pi.add_argument("n", type=int)
    pi.add_argument(
        "--batch",
        "-b",
        type=int_list,
        default=[1000],
        help="jobs per insert_all call, comma-separated list; 0 = all N (default 1000)",
    )

    pp = sub.add_parser("process", help="process N pre-inserted no-op jobs with one node")
    pp.add_argument("n", type=int)
    pp.add_argument(
        "--preinsert",
        choices=("api", "sql"),
        default="api",
        help="how the untimed backlog is written (default: insert_all)",
    )

    pl = sub.add_parser("latency", help="insert-to-start latency at a steady rate")
    pl.add_argument("--rate", type=float, default=50)
    pl.add_argument("--seconds", type=float, default=10)

    pb = sub.add_parser("backlog", help="throughput vs backlog size")
    pb.add_argument("--sizes", type=int_list, default=[10_000, 100_000, 1_000_000])
    pb.add_argument(
        "--history",
        type=int,
        default=0,
        help="completed jobs already in the table before the backlog (default 0)",
    )

    for sp, dc in ((pp, "10"), (pl, "10"), (pb, "100")):
        sp.add_argument(
            "--concurrency",
            "-c",
            type=int_list,
            default=int_list(dc),
            help=f"queue concurrency, comma-separated list (default {dc})",
        )
    for sp in (pi, pp, pl, pb):
        sp.add_argument("--reps", type=int, default=1, help="repetitions (default 1)")
    for sp in (pp, pb):
        sp.add_argument(
            "--timeout", type=float, default=1800, help="give up after this many seconds"
        )

    pw = sub.add_parser("_worker", help=argparse.SUPPRESS)
    pw.add_argument("--concurrency", type=int, default=10)
    pw.add_argument("--records", required=True)
    args = p.parse_args(argv)
    if args.cmd == "_worker":
        pass
    elif args.cmd in ("latency", "backlog") and len(args.concurrency) != 1:
        p.error(f"{args.cmd} takes one --concurrency value")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    loop_name = install_loop(args.loop)
    bench = Bench(args, loop_name)
    if args.cmd == "_worker":
        bench.cmd_worker()
        return
    try:
        {
            "insert": bench.cmd_insert,
            "process": bench.cmd_process,
            "latency": bench.cmd_latency,
            "backlog": bench.cmd_backlog,
        }[args.cmd]()
    finally:
        bench.summary()


if __name__ == "__main__":
    main()
