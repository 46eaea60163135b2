"""The migration steps. Each is a pair of functions of (cursor, quoted prefix)."""

from __future__ import annotations

from typing import Any

from kerrera.engine.statements import unique_predicate

OBAN_V14 = """
CREATE TYPE {p}.oban_job_state AS ENUM
  ('available','suspended','scheduled','executing','retryable','completed','discarded',
   'cancelled');
CREATE TABLE {p}.oban_jobs (
  id bigserial PRIMARY KEY,
  state {p}.oban_job_state NOT NULL DEFAULT 'available',
  queue text NOT NULL DEFAULT 'default',
  worker text NOT NULL,
  args jsonb NOT NULL DEFAULT '{{}}',
  errors jsonb[] NOT NULL DEFAULT ARRAY[]::jsonb[],
  attempt integer NOT NULL DEFAULT 0,
  max_attempts integer NOT NULL DEFAULT 20,
  inserted_at timestamp NOT NULL DEFAULT timezone('UTC', now()),
  scheduled_at timestamp NOT NULL DEFAULT timezone('UTC', now()),
  attempted_at timestamp,
  completed_at timestamp,
  attempted_by text[],
  discarded_at timestamp,
  priority integer NOT NULL DEFAULT 0,
  tags text[] DEFAULT ARRAY[]::text[],
  meta jsonb DEFAULT '{{}}',
  cancelled_at timestamp,
  CONSTRAINT worker_length CHECK (char_length(worker) > 0 AND char_length(worker) < 128),
  CONSTRAINT queue_length CHECK (char_length(queue) > 0 AND char_length(queue) < 128),
  CONSTRAINT positive_max_attempts CHECK (max_attempts > 0),
  CONSTRAINT attempt_range CHECK (attempt BETWEEN 0 AND max_attempts)
);
ALTER TABLE {p}.oban_jobs ADD CONSTRAINT non_negative_priority CHECK (priority >= 0) NOT VALID;
CREATE INDEX oban_jobs_state_queue_priority_scheduled_at_id_index
  ON {p}.oban_jobs (state, queue, priority, scheduled_at, id);
CREATE INDEX oban_jobs_args_index ON {p}.oban_jobs USING gin (args);
CREATE INDEX oban_jobs_meta_index ON {p}.oban_jobs USING gin (meta);
CREATE INDEX oban_jobs_state_cancelled_at_index ON {p}.oban_jobs (state, cancelled_at);
CREATE INDEX oban_jobs_state_discarded_at_index ON {p}.oban_jobs (state, discarded_at);
COMMENT ON TABLE {p}.oban_jobs IS '14';
"""

OBAN_PEERS = """
CREATE UNLOGGED TABLE {p}.oban_peers (
  name text PRIMARY KEY, node text NOT NULL,
  started_at timestamp NOT NULL, expires_at timestamp NOT NULL);
"""


def _exists(cur: Any, p: str, relation: str) -> bool:
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{p}.{relation}",))
    return bool(cur.fetchone()[0])


def up_1(cur: Any, p: str) -> str:
    """Oban's v14 tables, created only where Oban has not already created them."""
    created = []
    if not _exists(cur, p, "oban_jobs"):
        cur.execute(OBAN_V14.format(p=p))
        created.append("oban_jobs")
    if not _exists(cur, p, "oban_peers"):
        cur.execute(OBAN_PEERS.format(p=p))
        created.append("oban_peers")
    return ",".join(created)


def down_1(cur: Any, p: str, note: str) -> None:
    owned = set(filter(None, (note or "").split(",")))
    if "oban_peers" in owned:
        cur.execute(f"DROP TABLE IF EXISTS {p}.oban_peers")
    if "oban_jobs" in owned:
        cur.execute(f"DROP TABLE IF EXISTS {p}.oban_jobs")
        cur.execute(f"DROP TYPE IF EXISTS {p}.oban_job_state")


def _build_concurrently(cur: Any, p: str, name: str, definition: str) -> None:
    """CREATE INDEX CONCURRENTLY (outside a transaction): on a large table that an Elixir
    node is using, a plain CREATE INDEX would block its writes for the whole build. A
    build that was interrupted leaves an invalid index behind: dropped and rebuilt."""
    cur.execute(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.oid = to_regclass(%s)",
        (f"{p}.{name}",),
    )
    row = cur.fetchone()
    if row is not None and not row[0]:
        cur.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {p}.{name}")
    cur.execute(f"CREATE {definition.format(name=f'IF NOT EXISTS {name}', p=p)}")


def up_2(cur: Any, p: str) -> str:
    """A partial index of jobs waiting for a time, so staging never scans the backlog."""
    _build_concurrently(
        cur,
        p,
        "kerrera_jobs_due_index",
        "INDEX CONCURRENTLY {name} ON {p}.oban_jobs (scheduled_at, id) "
        "WHERE state IN ('scheduled', 'retryable')",
    )
    return ""


def down_2(cur: Any, p: str, note: str) -> None:
    cur.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {p}.kerrera_jobs_due_index")


def up_3(cur: Any, p: str) -> str:
    """Producers' heartbeats, so the lifeline can tell a dead node's jobs from live ones."""
    cur.execute(f"""
        CREATE TABLE IF NOT EXISTS {p}.kerrera_producers (
          uuid text PRIMARY KEY,
          node text NOT NULL,
          queue text NOT NULL,
          started_at timestamp NOT NULL DEFAULT timezone('UTC', now()),
          updated_at timestamp NOT NULL DEFAULT timezone('UTC', now())
        )""")
    return ""


def down_3(cur: Any, p: str, note: str) -> None:
    cur.execute(f"DROP TABLE IF EXISTS {p}.kerrera_producers")


def up_4(cur: Any, p: str) -> str:
    """Unique jobs: one row per `meta.uniq_key` among rows in their counted states."""
    _build_concurrently(
        cur,
        p,
        "kerrera_jobs_unique_index",
        "UNIQUE INDEX CONCURRENTLY {name} ON {p}.oban_jobs "
        f"((meta ->> 'uniq_key')) WHERE {unique_predicate()}",
    )
    return ""


def down_4(cur: Any, p: str, note: str) -> None:
    cur.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {p}.kerrera_jobs_unique_index")


def up_5(cur: Any, p: str) -> str:
    """Cluster state: queue control that survives restarts, cron ticks, and what each
    producer reports about itself (for check_all_queues)."""
    cur.execute(f"""
        CREATE TABLE IF NOT EXISTS {p}.kerrera_queues (
          queue text NOT NULL,
          node text NOT NULL DEFAULT '',
          paused boolean,
          "limit" integer,
          running boolean,
          updated_at timestamp NOT NULL DEFAULT timezone('UTC', now()),
          PRIMARY KEY (queue, node)
        );
        CREATE TABLE IF NOT EXISTS {p}.kerrera_cron (
          name text PRIMARY KEY,
          last_tick timestamp NOT NULL,
          updated_at timestamp NOT NULL DEFAULT timezone('UTC', now())
        );
        ALTER TABLE {p}.kerrera_producers
          ADD COLUMN IF NOT EXISTS state jsonb NOT NULL DEFAULT '{{}}';""")
    return ""


def down_5(cur: Any, p: str, note: str) -> None:
    cur.execute(f"""
        DROP TABLE IF EXISTS {p}.kerrera_queues;
        DROP TABLE IF EXISTS {p}.kerrera_cron;
        ALTER TABLE {p}.kerrera_producers DROP COLUMN IF EXISTS state;""")
