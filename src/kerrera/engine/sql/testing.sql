-- Statements of the testing helpers (kerrera.testing, drain_queue, inline mode).

-- name: enqueued_jobs
-- Jobs waiting to run (available or scheduled) that match the filters; args and meta
-- match by containment, so a test may give only the keys it cares about.
SELECT {cols} FROM {prefix}.oban_jobs
WHERE state IN ('available', 'scheduled')
  AND (%(worker)s::text IS NULL OR worker = %(worker)s::text)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
  AND (%(priority)s::int IS NULL OR priority = %(priority)s::int)
  AND args @> %(args)s::jsonb
  AND meta @> %(meta)s::jsonb
  AND tags @> %(tags)s::text[]
ORDER BY id;

-- name: claim_jobs
-- Start these jobs now, whatever their schedule, as a fetch would (inline mode).
UPDATE {prefix}.oban_jobs j
SET state = 'executing', attempt = j.attempt + 1,
    max_attempts = greatest(j.max_attempts, j.attempt + 1),
    attempted_at = timezone('UTC', now()),
    attempted_by = ARRAY[%(node)s::text, %(producer)s::text]
WHERE j.id = ANY(%(ids)s::bigint[]) AND j.state IN ('available', 'scheduled', 'retryable')
RETURNING {jcols};

-- name: stage_queue_now
-- Make every scheduled and retryable job of a queue available, due or not (drain_queue
-- with_scheduled).
UPDATE {prefix}.oban_jobs
SET state = 'available'
WHERE queue = %(queue)s AND state IN ('scheduled', 'retryable');

-- name: available_ids
-- A queue's available jobs, in the order a producer would fetch them.
SELECT id FROM {prefix}.oban_jobs
WHERE state = 'available' AND queue = %(queue)s
ORDER BY priority, scheduled_at, id;
