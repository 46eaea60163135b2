-- Operator queries (kerrera jobs / queues / top): listing, counting and choosing jobs for
-- bulk actions. Each filter is an optional array: NULL means "any". The CLI runs each
-- statement a few times per process at most, so PostgreSQL plans them with the values
-- in hand and the NULL branches fold away; a state filter then uses the state-leading
-- indexes.

-- name: list_jobs
-- Newest first; `before` continues a listing below the last id seen (keyset paging).
SELECT {cols} FROM {prefix}.oban_jobs
WHERE (%(states)s::text[] IS NULL OR state = ANY(%(states)s::text[]::{prefix}.oban_job_state[]))
  AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))
  AND (%(workers)s::text[] IS NULL OR worker = ANY(%(workers)s::text[]))
  AND (%(before)s::bigint IS NULL OR id < %(before)s::bigint)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: count_jobs
-- Unfinished jobs per queue and state. Naming the states keeps this on the index that
-- starts with state, so the millions of completed rows a busy table holds are never read.
SELECT queue, state::text, count(*) FROM {prefix}.oban_jobs
WHERE state IN ('available', 'scheduled', 'retryable', 'executing', 'suspended')
GROUP BY queue, state
ORDER BY queue, state;

-- name: last_job_id
-- The upper bound of a bulk action: jobs inserted after it started are left alone, so a
-- busy queue cannot keep a "cancel everything available" running forever.
SELECT coalesce(max(id), 0) FROM {prefix}.oban_jobs;

-- name: select_job_ids
-- One chunk of a bulk action, in id order (keyset on id, so each chunk is an index range
-- and a row that stops matching after its chunk is never visited twice).
SELECT id FROM {prefix}.oban_jobs
WHERE (%(states)s::text[] IS NULL OR state = ANY(%(states)s::text[]::{prefix}.oban_job_state[]))
  AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))
  AND (%(workers)s::text[] IS NULL OR worker = ANY(%(workers)s::text[]))
  AND id > %(after)s::bigint AND id <= %(upto)s::bigint
ORDER BY id
LIMIT %(limit)s;

-- name: count_matching
-- How many jobs a bulk action is about to visit (for its progress display only).
SELECT count(*) FROM {prefix}.oban_jobs
WHERE (%(states)s::text[] IS NULL OR state = ANY(%(states)s::text[]::{prefix}.oban_job_state[]))
  AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))
  AND (%(workers)s::text[] IS NULL OR worker = ANY(%(workers)s::text[]))
  AND id <= %(upto)s::bigint;

-- name: known_names
-- Every queue a node, a queue command or a job has used ('queue', name), and every node
-- with a live (or not yet expired) producer ('node', name): to tell a typo from a name. The jobs' queues
-- are read by skipping along the index that starts (state, queue): one index probe per
-- (state, queue) pair, so a table of millions costs a few dozen probes, never a scan.
WITH RECURSIVE seen AS (
  (SELECT state, queue FROM {prefix}.oban_jobs ORDER BY state, queue LIMIT 1)
  UNION ALL
  SELECT later.state, later.queue FROM seen, LATERAL (
    SELECT j.state, j.queue FROM {prefix}.oban_jobs j
    WHERE (j.state, j.queue) > (seen.state, seen.queue)
    ORDER BY j.state, j.queue
    LIMIT 1
  ) later
)
SELECT 'queue', queue FROM seen
UNION SELECT 'queue', queue FROM {prefix}.kerrera_producers
UNION SELECT 'queue', queue FROM {prefix}.kerrera_queues
UNION SELECT 'node', node FROM {prefix}.kerrera_producers
ORDER BY 1, 2;
