"""Migration 6: workflows. Steps waiting on others sit in `suspended`; a trigger on
`oban_jobs` releases them in the transaction that finishes their last dependency.

Why a trigger: it runs in whatever transaction finishes a step, whoever wrote it
(Kerrera's ack, a cancel from the CLI or the dashboard, the lifeline, a delete, an Elixir
node running the step), so no polling loop decides a release, and a crash can neither
lose one nor make two. Its WHEN clause tests the new state first, so the fetch (which
moves rows to `executing`) never evaluates more than that comparison, and the ack of a
plain job one `meta ? 'workflow_id'` test.

Release is O(1) per finished job: `kerrera_workflow_edges` lists, per workflow and
dependency name, the jobs waiting on it, and `kerrera_workflow_waits` keeps per waiting
job how many dependency jobs have not finished. Concurrent acks of a job's last two
dependencies serialise on its `waits` row (an UPDATE under READ COMMITTED re-reads the
latest version), so exactly one of them sees the count reach zero.
"""

from __future__ import annotations

from typing import Any

from kerrera.engine.migrations.steps import _build_concurrently

_FINAL = "('completed', 'cancelled', 'discarded')"

_TABLES = """
CREATE TABLE IF NOT EXISTS {p}.kerrera_workflows (
  id text PRIMARY KEY,
  name text,
  context jsonb NOT NULL DEFAULT '{{}}',
  -- graft steps that grafted already (a retried graft step does not graft twice)
  grafted text[] NOT NULL DEFAULT '{{}}',
  inserted_at timestamp NOT NULL DEFAULT timezone('UTC', now())
);
CREATE INDEX IF NOT EXISTS kerrera_workflows_inserted_at_index
  ON {p}.kerrera_workflows (inserted_at);
CREATE TABLE IF NOT EXISTS {p}.kerrera_workflow_waits (
  job_id bigint PRIMARY KEY,
  workflow_id text NOT NULL,
  -- dependency jobs that have not finished yet
  pending integer NOT NULL,
  -- outcomes of dependencies this step runs after anyway
  ignore text[] NOT NULL DEFAULT '{{}}',
  -- why it will not run (the first dependency that ended badly), once known
  failed text
);
CREATE TABLE IF NOT EXISTS {p}.kerrera_workflow_edges (
  workflow_id text NOT NULL,
  dep text NOT NULL,
  job_id bigint NOT NULL,
  PRIMARY KEY (workflow_id, dep, job_id)
);
CREATE INDEX IF NOT EXISTS kerrera_workflow_edges_job_id_index
  ON {p}.kerrera_workflow_edges (job_id);
"""

_FUNCTION = """
CREATE OR REPLACE FUNCTION {p}.kerrera_workflow_step() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
  job record;
  outcome text;
  names text[];
  wf text;
  queues text[];
  ready_ids bigint[];
  ready_failed text[];
  q text;
BEGIN
  IF TG_OP = 'DELETE' THEN
    DELETE FROM {p}.kerrera_workflow_edges WHERE job_id = OLD.id;
    DELETE FROM {p}.kerrera_workflow_waits WHERE job_id = OLD.id;
    -- a finished step that is pruned was counted when it finished
    IF OLD.state IN {final} THEN RETURN NULL; END IF;
    job := OLD;
    outcome := 'deleted';
  ELSE
    -- (the WHEN clause let only a step that just finished through)
    job := NEW;
    outcome := NEW.state::text;
  END IF;
  wf := job.meta ->> 'workflow_id';
  IF jsonb_typeof(job.meta -> 'announces') = 'array' THEN
    names := ARRAY(SELECT jsonb_array_elements_text(job.meta -> 'announces'));
  ELSE
    names := ARRAY[job.meta ->> 'name'];
  END IF;

  -- (three statements, not one: a statement's CTEs cannot see each other's writes)
  WITH counted AS (
    SELECT e.job_id, count(*)::int AS n
    FROM {p}.kerrera_workflow_edges e
    WHERE e.workflow_id = wf AND e.dep = ANY(names)
    GROUP BY e.job_id
  ), counted_down AS (
    UPDATE {p}.kerrera_workflow_waits w
    SET pending = w.pending - c.n,
        failed = coalesce(w.failed,
          CASE WHEN outcome <> 'completed' AND NOT (outcome = ANY(w.ignore))
               THEN format('dependency %s (job %s) was %s', job.meta ->> 'name', job.id, outcome)
          END)
    FROM counted c
    WHERE w.job_id = c.job_id
    RETURNING w.job_id, w.pending, w.failed
  )
  SELECT array_agg(d.job_id), array_agg(d.failed) INTO ready_ids, ready_failed
  FROM counted_down d WHERE d.pending <= 0 OR d.failed IS NOT NULL;
  IF ready_ids IS NULL THEN RETURN NULL; END IF;

  DELETE FROM {p}.kerrera_workflow_waits WHERE job_id = ANY(ready_ids);
  WITH moved AS (
    UPDATE {p}.oban_jobs j
    SET state = CASE WHEN r.failed IS NOT NULL THEN 'cancelled'
                     WHEN j.scheduled_at > timezone('UTC', now()) THEN 'scheduled'
                     ELSE 'available' END::{p}.oban_job_state,
        cancelled_at = CASE WHEN r.failed IS NOT NULL THEN timezone('UTC', now())
                            ELSE j.cancelled_at END,
        errors = CASE WHEN r.failed IS NULL THEN j.errors
                      ELSE j.errors || jsonb_build_object(
                        'at', timezone('UTC', now()), 'attempt', j.attempt,
                        'error', 'cancelled: ' || r.failed) END
    FROM unnest(ready_ids, ready_failed) AS r(job_id, failed)
    WHERE j.id = r.job_id AND j.state = 'suspended'
    RETURNING j.state, j.queue
  )
  SELECT array_agg(DISTINCT m.queue) FILTER (WHERE m.state = 'available') INTO queues FROM moved m;

  IF queues IS NOT NULL THEN
    FOREACH q IN ARRAY queues LOOP
      PERFORM pg_notify({channel}, json_build_object('queue', q)::text);
    END LOOP;
  END IF;
  RETURN NULL;
END
$fn$;
"""

#: A finished step made unfinished again (a retry by hand, `retry_jobs`): the steps
#: still waiting on it count it again, so that it must finish again before they run.
#: A workflow retry recounts by itself and switches this off for its transaction.
_REOPEN = """
CREATE OR REPLACE FUNCTION {p}.kerrera_workflow_reopen() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
  names text[];
BEGIN
  IF coalesce(current_setting('kerrera.workflow_reset', true), '') = 'on' THEN RETURN NULL; END IF;
  IF jsonb_typeof(NEW.meta -> 'announces') = 'array' THEN
    names := ARRAY(SELECT jsonb_array_elements_text(NEW.meta -> 'announces'));
  ELSE
    names := ARRAY[NEW.meta ->> 'name'];
  END IF;
  UPDATE {p}.kerrera_workflow_waits w
  SET pending = w.pending + c.n
  FROM (SELECT e.job_id, count(*)::int AS n FROM {p}.kerrera_workflow_edges e
        WHERE e.workflow_id = NEW.meta ->> 'workflow_id' AND e.dep = ANY(names)
        GROUP BY e.job_id) c
  WHERE w.job_id = c.job_id;
  RETURN NULL;
END
$fn$;
"""

_TRIGGERS = """
DROP TRIGGER IF EXISTS kerrera_workflow_finished ON {p}.oban_jobs;
CREATE TRIGGER kerrera_workflow_finished
  AFTER UPDATE OF state ON {p}.oban_jobs
  FOR EACH ROW
  WHEN (NEW.state IN {final} AND OLD.state NOT IN {final} AND NEW.meta ? 'workflow_id')
  EXECUTE FUNCTION {p}.kerrera_workflow_step();
DROP TRIGGER IF EXISTS kerrera_workflow_reopened ON {p}.oban_jobs;
CREATE TRIGGER kerrera_workflow_reopened
  AFTER UPDATE OF state ON {p}.oban_jobs
  FOR EACH ROW
  WHEN (OLD.state IN {final} AND NEW.state NOT IN {final} AND NEW.meta ? 'workflow_id')
  EXECUTE FUNCTION {p}.kerrera_workflow_reopen();
DROP TRIGGER IF EXISTS kerrera_workflow_deleted ON {p}.oban_jobs;
CREATE TRIGGER kerrera_workflow_deleted
  AFTER DELETE ON {p}.oban_jobs
  FOR EACH ROW
  WHEN (OLD.meta ? 'workflow_id')
  EXECUTE FUNCTION {p}.kerrera_workflow_step();
"""


def _channel_literal(p: str) -> str:
    """The insert channel of prefix `p` (quoted identifier) as an SQL string literal."""
    bare = p.strip('"')
    return "'" + f"{bare}.oban_insert".replace("'", "''") + "'"


def up_6(cur: Any, p: str) -> str:
    """Workflow tables, the release trigger, and an index of steps by workflow."""
    cur.execute(_TABLES.format(p=p))
    cur.execute(_FUNCTION.format(p=p, final=_FINAL, channel=_channel_literal(p)))
    cur.execute(_REOPEN.format(p=p))
    cur.execute(_TRIGGERS.format(p=p, final=_FINAL))
    # (not transactional: the index on a busy table is built concurrently)
    _build_concurrently(
        cur,
        p,
        "kerrera_jobs_workflow_index",
        "INDEX CONCURRENTLY {name} ON {p}.oban_jobs ((meta ->> 'workflow_id'), id) "
        "WHERE meta ? 'workflow_id'",
    )
    return ""


def down_6(cur: Any, p: str, note: str) -> None:
    """Drop what `up_6` made (never Oban's tables)."""
    cur.execute(f"""
        DROP TRIGGER IF EXISTS kerrera_workflow_finished ON {p}.oban_jobs;
        DROP TRIGGER IF EXISTS kerrera_workflow_deleted ON {p}.oban_jobs;
        DROP TRIGGER IF EXISTS kerrera_workflow_reopened ON {p}.oban_jobs;
        DROP FUNCTION IF EXISTS {p}.kerrera_workflow_step();
        DROP FUNCTION IF EXISTS {p}.kerrera_workflow_reopen();
        DROP TABLE IF EXISTS {p}.kerrera_workflow_edges;
        DROP TABLE IF EXISTS {p}.kerrera_workflow_waits;
        DROP TABLE IF EXISTS {p}.kerrera_workflows;""")
    cur.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {p}.kerrera_jobs_workflow_index")
