"""Seed a database with many jobs for the dashboard's scale figures (see README.md).

    python bench/seed_jobs.py --dsn postgresql://postgres@localhost/kerrera_web10m
    python bench/seed_jobs.py --dsn ... --jobs 1000000 --chunk 250000

The database is created when missing (never seed a database that holds real jobs: the
script refuses a non-empty `oban_jobs` unless `--append`). Jobs spread over every state
(a few states stay below 50,000 so that the dashboard shows both exact and estimated
counts), 12 queues with a skewed load, 40 workers, args with nested ids, meta with batch
ids, tags and nodes. Rows are made by PostgreSQL itself (`INSERT ... SELECT` over
`generate_series`, one transaction per chunk) with Oban's indexes dropped during the load
and rebuilt after it; then Kerrera's migrations add their indexes and the table is
analyzed. `--nice` lowers the priority of the server process doing the work (it runs as
another user, so this needs the right to renice it; otherwise a warning).
"""

from __future__ import annotations

import argparse
import subprocess
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from kerrera.engine.migrations import migrate_up
from kerrera.engine.migrations.web import create_dashboard_indexes

#: Share of each state, in thousandths (sums to 1000). Executing and suspended stay
#: small at any size: counted exactly, while the big states show an estimate.
STATE_SHARES = (
    ("completed", 700.0),
    ("available", 120.0),
    ("scheduled", 80.0),
    ("discarded", 40.0),
    ("cancelled", 30.0),
    ("retryable", 28.0),
    ("executing", 1.5),
    ("suspended", 0.5),
)
QUEUES = (
    "default", "mailers", "media", "webhooks", "reports", "billing",
    "search", "exports", "imports", "notifications", "analytics", "low",
)  # fmt: skip
WORKERS_PER_QUEUE = 40 // len(QUEUES) + 1
ERRORS = (
    "RuntimeError: upstream said 502",
    "TimeoutError: read timed out after 30s",
    "KeyError: account_id",
    "ValueError: invalid literal for int() with base 10: x",
    "ConnectionResetError: [Errno 104] Connection reset by peer",
)


def state_case() -> str:
    """SQL choosing a state from `r` (a uniform number in [0, 1000))."""
    whens, edge = [], 0.0
    for state, share in STATE_SHARES[:-1]:
        edge += share
        whens.append(f"WHEN r < {edge} THEN '{state}'")
    return f"(CASE {' '.join(whens)} ELSE '{STATE_SHARES[-1][0]}' END)::oban_job_state"


def chunk_sql(total: int) -> str:
    """One chunk of rows, ids from %(lo)s to %(hi)s; time runs over 30 days with the id."""
    queues = "ARRAY[" + ",".join(f"'{q}'" for q in QUEUES) + "]"
    errors = "ARRAY[" + ",".join(f"'{e}'" for e in ERRORS) + "]"
    return f"""
    INSERT INTO oban_jobs (id, state, queue, worker, args, errors, attempt, max_attempts,
      inserted_at, scheduled_at, attempted_at, completed_at, attempted_by, discarded_at,
      priority, tags, meta, cancelled_at)
    SELECT i, st, q, w, a, e, att, 20, ins,
      CASE WHEN st IN ('scheduled', 'retryable') THEN now_utc + (i % 86400) * interval '1 s'
           ELSE ins END,
      CASE WHEN att > 0 THEN ins + interval '2 s' END,
      CASE WHEN st = 'completed' THEN ins + interval '3 s' END,
      CASE WHEN att > 0 THEN ARRAY['node-' || (i % 8), md5(q || (i % 8))] END,
      CASE WHEN st = 'discarded' THEN ins + interval '3 s' END,
      (i % 4), t, m,
      CASE WHEN st = 'cancelled' THEN ins + interval '3 s' END
    FROM (
      SELECT i, st, q, q || '.Worker' || (h % {WORKERS_PER_QUEUE}) AS w,
        CASE WHEN st IN ('available', 'scheduled', 'suspended') THEN 0 ELSE 1 + (h % 3) END
          AS att,
        jsonb_build_object('user', jsonb_build_object('id', h % 100000),
                           'account_id', h % 5000, 'kind', (ARRAY['a','b','c'])[1 + h % 3])
          AS a,
        CASE WHEN st IN ('retryable', 'discarded') THEN ARRAY[jsonb_build_object(
          'attempt', 1, 'at', now_utc,
          'error', ({errors})[1 + h % {len(ERRORS)}] || E'\\nTraceback (most recent call last):'
        )] ELSE ARRAY[]::jsonb[] END AS e,
        now_utc - ({total} - i) * (interval '30 days' / {total}) AS ins,
        CASE WHEN h % 10 = 0 THEN ARRAY['vip'] WHEN h % 10 = 1 THEN ARRAY['bulk', 'eu']
             ELSE ARRAY[]::text[] END AS t,
        CASE WHEN h % 5 = 0 THEN jsonb_build_object('batch_id', 'b' || (i / 1000))
             ELSE '{{}}'::jsonb END AS m,
        now_utc
      FROM (
        SELECT i, ({queues})[1 + least(11, floor(-ln(1 - random()) * 3))::int] AS q,
          {state_case()} AS st, (hashint8(i)::bigint & 2147483647) AS h,
          timezone('UTC', now()) AS now_utc
        FROM (SELECT i, random() * 1000 AS r FROM generate_series(%(lo)s::bigint,
              %(hi)s::bigint) AS i) g
      ) s
    ) x""".replace(" % ", " %% ")


STATS_SQL = """
WITH minutes AS (
  SELECT date_trunc('minute', timezone('UTC', now())) - m * interval '1 minute' AS bucket,
    q AS queue, q || '.Worker' || w AS worker, (50 + random() * 100)::bigint AS completed,
    (random() * 5)::bigint AS failed, (random() * 2)::bigint AS cancelled,
    (SELECT array_agg(CASE WHEN b BETWEEN 12 AND 30 THEN (random() * 20)::int ELSE 0 END
                      ORDER BY b) FROM generate_series(0 * m, 63) AS b) AS exec_hist,
    (SELECT array_agg(CASE WHEN b BETWEEN 4 AND 24 THEN (random() * 20)::int ELSE 0 END
                      ORDER BY b) FROM generate_series(0 * m, 63) AS b) AS queue_hist
  FROM generate_series(0, %(minutes)s - 1) AS m, unnest(%(queues)s::text[]) AS q,
    generate_series(0, %(workers)s - 1) AS w
), spans AS (
  -- Every resolution and grouping, as nodes write them (services/stats.py).
  SELECT s.span, to_timestamp(floor(extract(epoch FROM bucket AT TIME ZONE 'UTC') / s.span)
      * s.span) AT TIME ZONE 'UTC' AS bucket,
    g.queue, g.worker, completed, failed, cancelled, exec_hist, queue_hist
  FROM minutes, (VALUES (60), (900)) AS s(span),
    LATERAL (VALUES (minutes.queue, minutes.worker), (minutes.queue, ''), ('', ''))
      AS g(queue, worker)
), summed AS (
  SELECT span, bucket, queue, worker, sum(completed) AS completed, sum(failed) AS failed,
    sum(cancelled) AS cancelled, array_agg(exec_hist) AS e, array_agg(queue_hist) AS q
  FROM spans GROUP BY span, bucket, queue, worker
)
INSERT INTO kerrera_job_stats (span, bucket, queue, worker, completed, failed, cancelled,
  other, exec_hist, queue_hist)
SELECT span, bucket, queue, worker, completed, failed, cancelled, 0,
  (SELECT array_agg(t ORDER BY i) FROM (SELECT (n - 1) %% 64 AS i, sum(v)::int AS t
     FROM unnest(e) WITH ORDINALITY AS u(v, n) GROUP BY 1) AS x),
  (SELECT array_agg(t ORDER BY i) FROM (SELECT (n - 1) %% 64 AS i, sum(v)::int AS t
     FROM unnest(q) WITH ORDINALITY AS u(v, n) GROUP BY 1) AS x)
FROM summed
ON CONFLICT DO NOTHING"""


def seed_stats(conn: psycopg.Connection[Any], hours: int = 24) -> None:
    """A day of per-minute statistics for every worker (what nodes would have written),
    so that the charts are measured on a full table."""
    params = {"minutes": hours * 60, "queues": list(QUEUES), "workers": WORKERS_PER_QUEUE}
    t0 = time.monotonic()
    conn.execute(STATS_SQL, params)
    conn.execute("ANALYZE kerrera_job_stats")
    print(f"job statistics for {hours}h seeded in {time.monotonic() - t0:.0f}s", flush=True)


def ensure_database(dsn: str) -> None:
    """Create the database named in `dsn` when it does not exist."""
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    if not name or name in ("postgres", "template1"):
        raise SystemExit(f"--dsn must name a database of its own, not {name!r}")
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not found:
            conn.execute(f'CREATE DATABASE "{name}"')
            print(f"created database {name}")


def renice(conn: psycopg.Connection[Any], nice: int) -> None:
    """Lower the server process's priority (the seed must not starve a shared machine)."""
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
    done = subprocess.run(["renice", "-n", str(nice), "-p", str(pid)], capture_output=True)
    if done.returncode != 0:
        print(f"warning: could not renice server process {pid}: {done.stderr.decode().strip()}")


def drop_oban_indexes(conn: psycopg.Connection[Any]) -> list[str]:
    """Drop oban_jobs' secondary indexes; return their definitions, to rebuild after."""
    rows = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
        "AND tablename = 'oban_jobs' AND indexname <> 'oban_jobs_pkey'"
    ).fetchall()
    for name, _ in rows:
        conn.execute(f'DROP INDEX "{name}"')
    return [definition for _, definition in rows]


def seed(dsn: str, total: int, chunk: int, nice: int, append: bool) -> None:
    """Load `total` jobs in chunks, then build the indexes and analyze."""
    ensure_database(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        renice(conn, nice)
        migrate_up(conn, "public", target=1)
        start = conn.execute("SELECT coalesce(max(id), 0) FROM oban_jobs").fetchone()[0]  # type: ignore[index]
        if start and not append:
            raise SystemExit(f"oban_jobs already holds jobs (max id {start}); pass --append")
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET maintenance_work_mem = '256MB'")
        conn.execute("SELECT setseed(0.42)")
        definitions = drop_oban_indexes(conn)
        sql = chunk_sql(start + total)
        began = time.monotonic()
        for lo in range(start + 1, start + total + 1, chunk):
            hi = min(lo + chunk - 1, start + total)
            conn.execute(sql, {"lo": lo, "hi": hi})  # type: ignore[arg-type]
            rate = (hi - start) / (time.monotonic() - began)
            print(f"{hi - start:>12,} jobs  ({rate:,.0f}/s)", flush=True)
        conn.execute(
            "SELECT setval(pg_get_serial_sequence('oban_jobs', 'id'), "
            "(SELECT max(id) FROM oban_jobs))"
        )
        for definition in definitions:
            t0 = time.monotonic()
            conn.execute(definition)
            print(f"rebuilt in {time.monotonic() - t0:.0f}s: {definition}", flush=True)
        t0 = time.monotonic()
        migrate_up(conn, "public")
        create_dashboard_indexes(conn, "public")  # (opt-in: `kerrera web indexes`)
        print(f"migrated (Kerrera's indexes) in {time.monotonic() - t0:.0f}s", flush=True)
        conn.execute("VACUUM (ANALYZE) oban_jobs")
        seed_stats(conn)
        print(f"done in {time.monotonic() - began:.0f}s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", required=True, help="database to seed (created if missing)")
    parser.add_argument("--jobs", type=int, default=10_000_000, help="how many jobs")
    parser.add_argument("--chunk", type=int, default=500_000, help="rows per transaction")
    parser.add_argument("--nice", type=int, default=10, help="niceness of the server process")
    parser.add_argument("--append", action="store_true", help="add to existing jobs")
    parser.add_argument("--stats-only", action="store_true", help="only seed job statistics")
    opts = parser.parse_args()
    if opts.jobs < 1 or opts.chunk < 1:
        parser.error("--jobs and --chunk must be positive")
    if opts.stats_only:
        with psycopg.connect(opts.dsn, autocommit=True) as conn:
            seed_stats(conn)
        return
    seed(opts.dsn, opts.jobs, opts.chunk, opts.nice, opts.append)


if __name__ == "__main__":
    main()
