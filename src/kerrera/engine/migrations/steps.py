"""The migration steps. Each is a pair of functions of (cursor, quoted prefix)."""

from __future__ import annotations

from typing import Any

from kerrera.core.errors import SchemaError
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
    """Nothing: Oban's tables outlive Kerrera's schema. Once an Elixir node shares them
    they hold its jobs, so only an explicit request drops them (`drop_oban_tables`)."""


#: Oban's version of its table, as Kerrera writes it when it creates the table. Another
#: number (or `∞`) there was written by an Oban migrator.
OBAN_VERSION = "14"
#: How many workers a refusal names.
TOP_WORKERS = 5


def oban_tables(cur: Any, p: str) -> list[str]:
    """Oban's objects that exist in the schema."""
    cur.execute(
        "SELECT name FROM unnest(ARRAY['oban_jobs', 'oban_peers']) AS name "
        "WHERE to_regclass(%s || '.' || name) IS NOT NULL "
        "UNION ALL SELECT 'oban_job_state' WHERE to_regtype(%s || '.oban_job_state') IS NOT NULL",
        (p, p),
    )
    return [name for (name,) in cur.fetchall()]


def oban_tables_in_use(cur: Any, p: str, note: str) -> list[str]:
    """Why Oban's tables must not be dropped (empty: they may be). What can be proven:
    rows in either table, a version comment Kerrera did not write, and tables Kerrera
    did not create (the note of migration 1). A past Elixir node that left no row behind
    (its jobs pruned, its leader row gone) cannot be told apart from none."""
    created = set(filter(None, note.split(",")))
    present = [t for t in oban_tables(cur, p) if t != "oban_job_state"]
    reasons = [f"Kerrera did not create {t}" for t in present if t not in created]
    if "oban_jobs" in present:
        reasons += _jobs_held(cur, p)
    if "oban_peers" in present:
        cur.execute(f"SELECT name, node FROM {p}.oban_peers ORDER BY name")
        peers = ", ".join(f"{name!r} on {node}" for name, node in cur.fetchall())
        if peers:
            reasons.append(f"oban_peers holds a leader's row ({peers})")
    return reasons


def _jobs_held(cur: Any, p: str) -> list[str]:
    reasons = []
    cur.execute(f"SELECT obj_description('{p}.oban_jobs'::regclass, 'pg_class')")
    (version,) = cur.fetchone()
    if version != OBAN_VERSION:
        found = "no version comment" if version is None else f"Oban migration version {version!r}"
        reasons.append(
            f"oban_jobs carries {found}, not the {OBAN_VERSION!r} Kerrera wrote: "
            "an Oban migrator has been at it"
        )
    cur.execute(
        f"SELECT worker, count(*) FROM {p}.oban_jobs GROUP BY worker ORDER BY 2 DESC, worker"
    )
    workers = cur.fetchall()
    if workers:
        total = sum(n for _, n in workers)
        top = ", ".join(f"{w}: {n}" for w, n in workers[:TOP_WORKERS])
        more = ", ..." if len(workers) > TOP_WORKERS else ""
        reasons.append(f"oban_jobs holds {total} job(s) ({top}{more})")
    return reasons


def drop_oban_tables(cur: Any, p: str, note: str) -> None:
    """Drop Oban's tables and type, in the caller's transaction, after checking again
    under a lock that no insert can slip past. Raises SchemaError naming what they hold."""
    present = [t for t in oban_tables(cur, p) if t != "oban_job_state"]
    if present:
        tables = ", ".join(f"{p}.{t}" for t in present)
        cur.execute(f"LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE")
    reasons = oban_tables_in_use(cur, p, note)
    if reasons:
        raise SchemaError(refusal(p, reasons))
    cur.execute(f"DROP TABLE IF EXISTS {p}.oban_peers")
    cur.execute(f"DROP TABLE IF EXISTS {p}.oban_jobs")
    cur.execute(f"DROP TYPE IF EXISTS {p}.oban_job_state")


def refusal(p: str, reasons: list[str]) -> str:
    """The message of a refused `drop_oban_tables`."""
    return f"refusing to drop Oban's tables in {p}: {'; '.join(reasons)}"


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
    cur.execute(f"SELECT NOT EXISTS (SELECT 1 FROM {p}.oban_jobs)")
    if cur.fetchone()[0]:
        # An empty table (a first install) is indexed at once, not concurrently: a
        # concurrent build waits for every transaction open on the server, among them
        # the caller's own when the first insert inside a transaction migrates.
        definition = definition.replace("INDEX CONCURRENTLY", "INDEX")
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
