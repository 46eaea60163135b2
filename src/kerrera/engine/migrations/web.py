"""Migration 8: what the operator's dashboard needs to stay fast on millions of jobs.

Indexes are built concurrently (outside a transaction), like migrations 2 and 4, so that
adding them to a busy table shared with Elixir nodes never blocks its writers. Each one
costs every job transition one more index entry, so only the ones the dashboard's pages
cannot do without are here:

- `(state, id)`: each state's list, newest first, paged by id (keyset), and the bounded
  counts per state (an index-only scan that stops at the exact-count limit);
- `(state, queue, id)` and `(state, worker, id)`: the same list filtered by queue or
  worker without sorting every matching row;
- GIN on `tags`, and a btree on the node that last ran a job (`attempted_by[1]`): the
  `tags:` and `nodes:` searches. `args.` and `meta.` searches use Oban's own GIN indexes
  (containment), and `ids:` the primary key.

It also creates `kerrera_job_stats`: the outcomes and the execution / queue time
histograms of finished jobs, written by nodes as jobs finish, so charts never scan
`oban_jobs`. Rows are kept at two resolutions (`span`: 60 s and 900 s buckets) and
three groupings (per queue and worker; per queue, with worker ''; all, with queue and
worker ''), all summed when written: a chart reads one row per point and series (a
day per queue is ~1,200 rows), never thousands of minutes to add up.
"""

from __future__ import annotations

from typing import Any

from kerrera.core.options import check_prefix
from kerrera.engine.migrations.steps import _build_concurrently

#: (name, definition) of every index of migration 8; `doctor()` checks the same list.
INDEXES: tuple[tuple[str, str], ...] = (
    ("kerrera_jobs_state_id_index", "INDEX CONCURRENTLY {name} ON {p}.oban_jobs (state, id)"),
    (
        "kerrera_jobs_state_queue_id_index",
        "INDEX CONCURRENTLY {name} ON {p}.oban_jobs (state, queue, id)",
    ),
    (
        "kerrera_jobs_state_worker_id_index",
        "INDEX CONCURRENTLY {name} ON {p}.oban_jobs (state, worker, id)",
    ),
    ("kerrera_jobs_tags_index", "INDEX CONCURRENTLY {name} ON {p}.oban_jobs USING gin (tags)"),
    (
        "kerrera_jobs_node_index",
        "INDEX CONCURRENTLY {name} ON {p}.oban_jobs ((attempted_by[1]), id)",
    ),
    # Oban's args index (jsonb_ops) indexes keys and values apart, so a rare nested value
    # (`args.user.id:4242`) intersects long lists; jsonb_path_ops indexes whole paths.
    (
        "kerrera_jobs_args_path_index",
        "INDEX CONCURRENTLY {name} ON {p}.oban_jobs USING gin (args jsonb_path_ops)",
    ),
)

#: Buckets of the duration histograms: bucket i counts durations below BOUNDS_MS[i]
#: milliseconds (the last one, everything longer). Powers of 2^(1/2) from 0.25 ms to
#: ~3 hours: a percentile read from them is within ~20% of the true value, and a
#: histogram is a fixed-size array that adds up across nodes and minutes.
BUCKETS = 64
BOUNDS_MS: tuple[float, ...] = tuple(0.25 * 2 ** (i / 2) for i in range(BUCKETS))

STATS_TABLE = """
CREATE TABLE IF NOT EXISTS {p}.kerrera_job_stats (
  span integer NOT NULL,
  bucket timestamp NOT NULL,
  queue text NOT NULL,
  worker text NOT NULL,
  completed bigint NOT NULL DEFAULT 0,
  failed bigint NOT NULL DEFAULT 0,
  cancelled bigint NOT NULL DEFAULT 0,
  other bigint NOT NULL DEFAULT 0,
  exec_hist integer[] NOT NULL,
  queue_hist integer[] NOT NULL,
  -- Worker before bucket: a chart per queue or overall (worker '') reads one range.
  PRIMARY KEY (span, worker, bucket, queue)
)"""
#: Resolutions of the stored statistics, in seconds.
SPANS = (60, 900)


def up_8(cur: Any, p: str) -> str:
    """The stats table. The dashboard's indexes are not built here: see
    `create_dashboard_indexes`."""
    cur.execute(STATS_TABLE.format(p=p))
    return ""


def create_dashboard_indexes(conn: Any, prefix: str) -> list[str]:
    """Build the dashboard's indexes (concurrently, on a connection in autocommit);
    return their names.

    Opt-in, not a migration: each index is written on every insert and every state
    change, and the first five together cost about a fifth of a node's insert and processing
    throughput (bench/README.md). They make the dashboard's lists and searches fast on
    millions of rows; `kerrera web doctor` says when they are missing, and
    `kerrera web indexes` builds them."""
    p = f'"{check_prefix(prefix)}"'
    with conn.cursor() as cur:
        for name, definition in INDEXES:
            _build_concurrently(cur, p, name, definition)
    return [name for name, _ in INDEXES]


def drop_dashboard_indexes(conn: Any, prefix: str) -> list[str]:
    """Drop the dashboard's indexes (concurrently); return their names."""
    p = f'"{check_prefix(prefix)}"'
    with conn.cursor() as cur:
        for name, _ in reversed(INDEXES):
            cur.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {p}.{name}")
    return [name for name, _ in INDEXES]


def down_8(cur: Any, p: str, note: str) -> None:
    """Drop what `up_8` created."""
    for name, _ in reversed(INDEXES):
        cur.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {p}.{name}")
    cur.execute(f"DROP TABLE IF EXISTS {p}.kerrera_job_stats")
