-- Workflows (see engine/migrations/workflows.py for the release trigger).

-- name: insert_workflow
-- The workflow row and every step in one statement: steps with dependencies go in
-- `suspended`, each with its count of unfinished dependency jobs (kerrera_workflow_waits)
-- and one edge per dependency name (kerrera_workflow_edges). A workflow id used before
-- fails the whole statement on the primary key.
WITH flow AS (
  INSERT INTO {prefix}.kerrera_workflows (id, name, context)
  VALUES (%(id)s, %(name)s, %(context)s::jsonb)
  RETURNING id
), input AS (
  SELECT j.*, coalesce(j.at, timezone('UTC', now()) + make_interval(secs => coalesce(j.delay, 0))) AS due
  FROM ROWS FROM (json_to_recordset(%(jobs)s::json)
    AS (queue text, worker text, args jsonb, meta jsonb, tags text[], priority int,
        max_attempts int, at timestamp, delay float8, pending int, deps text[],
        ignore text[])) WITH ORDINALITY
    AS j(queue, worker, args, meta, tags, priority, max_attempts, at, delay, pending, deps,
         ignore, ord)
), ins AS (
  INSERT INTO {prefix}.oban_jobs
    (state, queue, worker, args, meta, tags, priority, max_attempts, scheduled_at)
  SELECT CASE WHEN pending > 0 THEN 'suspended'
              WHEN due > timezone('UTC', now()) THEN 'scheduled'
              ELSE 'available' END::{prefix}.oban_job_state,
         queue, worker, args, meta, coalesce(tags, '{}'), priority, max_attempts, due
  FROM input, flow ORDER BY ord
  RETURNING id, state, inserted_at, scheduled_at, queue
), numbered AS (
  -- ids are drawn in input order (rows reach the insert sorted by ord)
  SELECT ins.*, row_number() OVER (ORDER BY ins.id) AS ord FROM ins
), waits AS (
  INSERT INTO {prefix}.kerrera_workflow_waits (job_id, workflow_id, pending, ignore)
  SELECT n.id, %(id)s, i.pending, coalesce(i.ignore, '{}')
  FROM numbered n JOIN input i ON i.ord = n.ord
  WHERE i.pending > 0
  RETURNING job_id
), edges AS (
  INSERT INTO {prefix}.kerrera_workflow_edges (workflow_id, dep, job_id)
  SELECT DISTINCT %(id)s, d.dep, n.id
  FROM numbered n JOIN input i ON i.ord = n.ord, unnest(i.deps) AS d(dep)
  WHERE i.pending > 0
  RETURNING job_id
), notified AS (
  SELECT count(pg_notify(%(channel)s, '{"queue":' || to_json(q.queue)::text || '}')) AS n
  FROM (SELECT DISTINCT queue FROM ins WHERE state = 'available') q
  WHERE %(channel)s::text IS NOT NULL
)
SELECT n.id, n.state, n.inserted_at, n.scheduled_at
FROM numbered n, notified, (SELECT count(*) FROM waits) w, (SELECT count(*) FROM edges) e
ORDER BY n.id;

-- name: graft_workflow
-- A graft step adds jobs to its workflow while it runs: each counts toward the graft
-- step's names, so every step waiting on those names waits for it too (their counts
-- grow in this transaction, while the graft step itself, still running, holds them
-- back). Only once per graft step: a retried graft step gets nothing new.
WITH mark AS (
  UPDATE {prefix}.kerrera_workflows
  SET grafted = grafted || %(step)s::text
  WHERE id = %(id)s AND NOT (%(step)s = ANY(grafted))
  RETURNING id
), input AS (
  SELECT j.*, coalesce(j.at, timezone('UTC', now()) + make_interval(secs => coalesce(j.delay, 0))) AS due
  FROM ROWS FROM (json_to_recordset(%(jobs)s::json)
    AS (queue text, worker text, args jsonb, meta jsonb, tags text[], priority int,
        max_attempts int, at timestamp, delay float8)) WITH ORDINALITY
    AS j(queue, worker, args, meta, tags, priority, max_attempts, at, delay, ord)
), ins AS (
  INSERT INTO {prefix}.oban_jobs
    (state, queue, worker, args, meta, tags, priority, max_attempts, scheduled_at)
  SELECT CASE WHEN due > timezone('UTC', now()) THEN 'scheduled' ELSE 'available' END
           ::{prefix}.oban_job_state,
         queue, worker, args, meta, coalesce(tags, '{}'), priority, max_attempts, due
  FROM input, mark ORDER BY ord
  RETURNING id, state, inserted_at, scheduled_at, queue
), bumped AS (
  UPDATE {prefix}.kerrera_workflow_waits w
  SET pending = w.pending + c.n * (SELECT count(*) FROM ins)
  FROM (SELECT e.job_id, count(*)::int AS n FROM {prefix}.kerrera_workflow_edges e
        WHERE e.workflow_id = %(id)s AND e.dep = ANY(%(names)s::text[])
        GROUP BY e.job_id) c, mark
  WHERE w.job_id = c.job_id
  RETURNING w.job_id
), notified AS (
  SELECT count(pg_notify(%(channel)s, '{"queue":' || to_json(q.queue)::text || '}')) AS n
  FROM (SELECT DISTINCT queue FROM ins WHERE state = 'available') q
  WHERE %(channel)s::text IS NOT NULL
)
SELECT ins.id, ins.state, ins.inserted_at, ins.scheduled_at
FROM ins, notified, (SELECT count(*) FROM bumped) b
ORDER BY ins.id;

-- name: workflow_row
-- A workflow's row: name, context (only when asked: it may be large), inserted_at (no
-- row: unknown id).
SELECT id, name, CASE WHEN %(context)s THEN context::text ELSE '{}' END, inserted_at
FROM {prefix}.kerrera_workflows WHERE id = %(id)s;

-- name: workflow_status
-- Steps per state, and the first insert and last finish (served by the workflow index).
SELECT state::text, count(*)::int, min(inserted_at),
       max(coalesce(completed_at, discarded_at, cancelled_at))
FROM {prefix}.oban_jobs
WHERE (meta ->> 'workflow_id') = %(id)s AND meta ? 'workflow_id'
GROUP BY state;

-- name: workflow_jobs
-- The steps of a workflow in insertion order; with `names`, only those counting toward
-- one of them (a group name gives its members).
SELECT {cols}
FROM {prefix}.oban_jobs
WHERE (meta ->> 'workflow_id') = %(id)s AND meta ? 'workflow_id'
  AND (%(names)s::text[] IS NULL OR (meta -> 'announces') ?| %(names)s::text[]
       OR (meta ->> 'name') = ANY(%(names)s::text[]))
ORDER BY id;

-- name: workflow_list
-- The most recent workflows, newest first, with their steps per state.
SELECT w.id, w.name, w.inserted_at,
       (SELECT coalesce(json_object_agg(s.state, s.n), '{}')::text
        FROM (SELECT state::text AS state, count(*) AS n FROM {prefix}.oban_jobs j
              WHERE (j.meta ->> 'workflow_id') = w.id AND j.meta ? 'workflow_id'
              GROUP BY state) s) AS states
FROM {prefix}.kerrera_workflows w
ORDER BY w.inserted_at DESC, w.id
LIMIT %(limit)s;

-- name: workflow_lock
-- Serialise workflow-wide changes (retry) on the workflow's row.
SELECT id FROM {prefix}.kerrera_workflows WHERE id = %(id)s FOR UPDATE;

-- name: workflow_reset
-- Run steps again (a workflow retry): each listed job goes back to `available`, or to
-- `suspended` with a fresh count of the dependency jobs it now waits for; edited args
-- replace the old ones. Attempts are not reset: a job whose attempts are spent gets one
-- more, as `retry_jobs` does.
WITH input AS (
  SELECT * FROM json_to_recordset(%(steps)s::json)
    AS r(id bigint, pending int, ignore text[], args jsonb)
), reset AS (
  UPDATE {prefix}.oban_jobs j
  SET state = CASE WHEN i.pending > 0 THEN 'suspended' ELSE 'available' END
                ::{prefix}.oban_job_state,
      scheduled_at = timezone('UTC', now()),
      max_attempts = greatest(j.max_attempts, j.attempt + 1),
      completed_at = NULL, cancelled_at = NULL, discarded_at = NULL,
      args = coalesce(i.args, j.args)
  FROM input i
  WHERE j.id = i.id AND j.state IN ('cancelled', 'discarded', 'suspended', 'retryable',
                                    'scheduled', 'available')
  RETURNING j.id, j.state, j.queue
), waits AS (
  INSERT INTO {prefix}.kerrera_workflow_waits (job_id, workflow_id, pending, ignore)
  SELECT i.id, %(id)s, i.pending, coalesce(i.ignore, '{}')
  FROM input i JOIN reset r ON r.id = i.id
  WHERE i.pending > 0
  ON CONFLICT (job_id) DO UPDATE SET pending = excluded.pending, failed = NULL
  RETURNING job_id
), unwaited AS (
  DELETE FROM {prefix}.kerrera_workflow_waits w
  USING input i JOIN reset r ON r.id = i.id
  WHERE w.job_id = i.id AND i.pending <= 0
  RETURNING w.job_id
), notified AS (
  SELECT count(pg_notify(%(channel)s, '{"queue":' || to_json(q.queue)::text || '}')) AS n
  FROM (SELECT DISTINCT queue FROM reset WHERE state = 'available') q
  WHERE %(channel)s::text IS NOT NULL
)
SELECT r.id, r.state::text, r.queue
FROM reset r, notified, (SELECT count(*) FROM waits) w, (SELECT count(*) FROM unwaited) u
ORDER BY r.id;

-- name: workflow_jobs_locked
-- The steps of a workflow, locked (a retry waits for acks in flight, then sees them).
SELECT {cols}
FROM {prefix}.oban_jobs
WHERE (meta ->> 'workflow_id') = %(id)s AND meta ? 'workflow_id'
ORDER BY id
FOR UPDATE;

-- name: workflow_reset_mark
-- The reopen trigger leaves counts to the retry in this transaction.
SELECT set_config('kerrera.workflow_reset', 'on', true);

-- name: prune_workflows
-- Workflows older than the pruner's largest max age whose steps were all pruned.
DELETE FROM {prefix}.kerrera_workflows w
WHERE w.id IN (
  SELECT o.id FROM {prefix}.kerrera_workflows o
  WHERE o.inserted_at < timezone('UTC', now()) - make_interval(secs => %(age)s)
    AND NOT EXISTS (SELECT 1 FROM {prefix}.oban_jobs j
                    WHERE (j.meta ->> 'workflow_id') = o.id AND j.meta ? 'workflow_id')
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED)
RETURNING w.id;
