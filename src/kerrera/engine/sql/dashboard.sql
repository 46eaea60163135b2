-- The dashboard's statements (engine/dashboard.py). Lists and counts take a WHERE clause
-- assembled in dashboard.py from fixed fragments, one per search field, each with its
-- own parameters: no text typed in the search box reaches the statement's text.

-- name: dashboard_jobs
-- The head of every job listing; dashboard.py appends the WHERE / ORDER BY / LIMIT.
SELECT {cols} FROM {prefix}.oban_jobs

-- name: dashboard_job
SELECT {cols} FROM {prefix}.oban_jobs WHERE id = %(id)s

-- name: dashboard_worker_jobs
-- Newest jobs of one worker: the newest few of each state, each an index range of
-- (state, worker, id) read backwards, then merged. One ORDER BY over all states would
-- read the worker's jobs from the newest job of the table down, filtering.
SELECT {cols} FROM (
  SELECT j.* FROM unnest(enum_range(NULL::{prefix}.oban_job_state)) AS s(state),
  LATERAL (SELECT * FROM {prefix}.oban_jobs o
           WHERE o.state = s.state AND o.worker = %(worker)s AND o.id <> %(exclude)s
           ORDER BY o.id DESC LIMIT %(limit)s) AS j
) AS jobs
ORDER BY id DESC LIMIT %(limit)s

-- name: dashboard_queues
-- The queues that have jobs in one state: a skip scan of (state, queue, id), one index
-- probe per queue instead of reading every job of the state.
WITH RECURSIVE q(queue) AS (
  (SELECT queue FROM {prefix}.oban_jobs WHERE state = %(state)s::{prefix}.oban_job_state
   ORDER BY queue LIMIT 1)
  UNION ALL
  SELECT (SELECT o.queue FROM {prefix}.oban_jobs o
          WHERE o.state = %(state)s::{prefix}.oban_job_state AND o.queue > q.queue
          ORDER BY o.queue LIMIT 1)
  FROM q WHERE q.queue IS NOT NULL
)
SELECT queue FROM q WHERE queue IS NOT NULL

-- name: dashboard_errors
-- Failed jobs grouped by worker and exception type, among the newest %(sample)s of each
-- failed state. The type comes from the last error: the last line of a Python traceback,
-- `Type: message`, Elixir's `** (Type) message`, or `(Cancelled) reason`.
WITH recent AS (
  (SELECT id, worker, errors[array_length(errors, 1)] AS e FROM {prefix}.oban_jobs
   WHERE state = 'discarded' ORDER BY id DESC LIMIT %(sample)s)
  UNION ALL
  (SELECT id, worker, errors[array_length(errors, 1)] AS e FROM {prefix}.oban_jobs
   WHERE state = 'retryable' ORDER BY id DESC LIMIT %(sample)s)
), lines AS (
  SELECT id, worker, (e ->> 'at') AS at,
    CASE WHEN (e ->> 'error') LIKE 'Traceback%%'
         THEN regexp_replace(rtrim(e ->> 'error', E'\n '), '^.*\n', '')
         ELSE split_part(coalesce(e ->> 'error', ''), E'\n', 1) END AS msg
  FROM recent
), kinds AS (
  SELECT id, worker, at, msg, coalesce(
    substring(msg from '^\*\* \(([^)]+)\)'),
    substring(msg from '^\(([^)]+)\)'),
    substring(msg from '^([A-Za-z_][A-Za-z0-9_.]*)(?::|$)'), '') AS kind
  FROM lines
)
SELECT worker, kind, count(*), max(at), max(id), (array_agg(msg ORDER BY id DESC))[1]
FROM kinds GROUP BY worker, kind
ORDER BY count(*) DESC, max(id) DESC
LIMIT %(limit)s

-- name: dashboard_suggest
-- Search suggestions: values of one field ({value}: a fixed expression chosen by
-- dashboard.py) among the newest jobs, a backwards range of the primary key.
SELECT v, count(*) FROM (
  SELECT {value} AS v FROM (
    SELECT queue, worker, tags, attempted_by, args, meta FROM {prefix}.oban_jobs
    ORDER BY id DESC LIMIT %(sample)s) AS recent
) AS found
WHERE v IS NOT NULL AND starts_with(v, %(prefix)s)
GROUP BY v ORDER BY count(*) DESC, v LIMIT %(limit)s

-- name: dashboard_last_id
SELECT coalesce(max(id), 0) FROM {prefix}.oban_jobs

-- name: dashboard_indexes
-- Indexes of oban_jobs by name, and whether each is usable (a failed concurrent build
-- leaves an invalid one).
SELECT c.relname, i.indisvalid FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = to_regclass(%(table)s)

-- name: dashboard_table_stats
SELECT n_live_tup, n_mod_since_analyze, greatest(last_analyze, last_autoanalyze)
FROM pg_stat_all_tables WHERE relid = to_regclass(%(table)s)

-- name: stats_upsert
-- One flush of a node's job statistics: rows of (span, bucket, queue, worker, counts,
-- histograms) added to what other nodes (or earlier flushes) wrote for the same bucket.
INSERT INTO {prefix}.kerrera_job_stats AS s
  (span, bucket, queue, worker, completed, failed, cancelled, other, exec_hist, queue_hist)
SELECT r.span, r.bucket, r.queue, r.worker, r.completed, r.failed, r.cancelled, r.other,
       r.exec_hist, r.queue_hist
FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(
  span integer, bucket timestamp, queue text, worker text, completed bigint, failed bigint,
  cancelled bigint, other bigint, exec_hist integer[], queue_hist integer[])
ORDER BY r.span, r.bucket, r.queue, r.worker
ON CONFLICT (span, worker, bucket, queue) DO UPDATE SET
  completed = s.completed + excluded.completed,
  failed = s.failed + excluded.failed,
  cancelled = s.cancelled + excluded.cancelled,
  other = s.other + excluded.other,
  exec_hist = (SELECT array_agg(a + b ORDER BY n)
               FROM unnest(s.exec_hist, excluded.exec_hist) WITH ORDINALITY AS h(a, b, n)),
  queue_hist = (SELECT array_agg(a + b ORDER BY n)
                FROM unnest(s.queue_hist, excluded.queue_hist) WITH ORDINALITY AS h(a, b, n))

-- name: stats_prune
-- Statistics older than the longest chart window (and some) are dropped.
DELETE FROM {prefix}.kerrera_job_stats WHERE bucket < %(before)s

-- name: stats_read
-- Chart rows of one resolution since %(since)s: dashboard.py appends which grouping
-- (fixed fragments). One row per point and series unless a filter names several.
SELECT bucket, queue, worker, completed, failed, cancelled, other, exec_hist, queue_hist
FROM {prefix}.kerrera_job_stats
WHERE span = %(span)s AND bucket >= %(since)s::timestamp

-- name: dashboard_update_job
-- Edit a waiting job (the dashboard's form): one guarded statement, so a job fetched or
-- finished meanwhile is left alone (no row returned). A NULL keeps the column. A new
-- schedule makes the job scheduled (or available, when due); a workflow step waiting
-- for its dependencies stays suspended.
UPDATE {prefix}.oban_jobs SET
  args = coalesce(%(args)s::jsonb, args),
  queue = coalesce(%(queue)s::text, queue),
  priority = coalesce(%(priority)s::int, priority),
  scheduled_at = coalesce(%(scheduled_at)s::timestamp, scheduled_at),
  state = CASE
    WHEN %(scheduled_at)s::timestamp IS NULL OR state = 'suspended' THEN state
    WHEN %(scheduled_at)s::timestamp > timezone('UTC', now())
      THEN 'scheduled'::{prefix}.oban_job_state
    ELSE 'available'::{prefix}.oban_job_state END
WHERE id = %(id)s AND state IN ('available', 'scheduled', 'retryable', 'suspended')
RETURNING {cols}

-- name: dashboard_cron
-- The cluster's cron entries: a small table, read in the order of its primary key.
SELECT name, last_tick, updated_at FROM {prefix}.kerrera_cron ORDER BY name
