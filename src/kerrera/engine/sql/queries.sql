-- Kerrera's named queries. Each block starts with "-- name: <name>". {prefix} is the
-- schema, a validated identifier substituted once when the engine starts; everything
-- else is a bound parameter. {cols} / {jcols} are the job columns as the engine reads
-- them (see statements.py).

-- name: insert_jobs
-- One statement per batch: rows arrive as one JSON array (a single parameter, parsed by
-- PostgreSQL), and the insert notification is sent in the same transaction so that it is
-- delivered only if the insert commits (channel NULL: not sent here, the engine hands it
-- to an in-process notifier). The state is decided with the database clock.
WITH input AS (
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
  FROM input ORDER BY ord
  RETURNING id, state, inserted_at, scheduled_at, queue
), notified AS (
  SELECT count(pg_notify(%(channel)s, '{"queue":' || to_json(q.queue)::text || '}')) AS n
  FROM (SELECT DISTINCT queue FROM ins WHERE state = 'available') q
  WHERE %(channel)s::text IS NOT NULL
)
-- Ids are drawn in input order (rows reach the insert sorted by ord), so sorting by id
-- gives the input order back; only the columns the database decided are returned.
SELECT ins.id, ins.state, ins.inserted_at, ins.scheduled_at
FROM ins, notified ORDER BY ins.id;

-- name: insert_unique
-- Unique jobs (see _unique.py): one statement per batch, keys already distinct within
-- it. An older holder of a key whose period has passed is retired first; then the
-- unique partial index decides, so concurrent inserters of one key get one row. On a
-- conflict the existing job is overwritten only where its `replace` spec allows, and
-- returned then (inserted = false); other conflicts return nothing here and the caller
-- reads the holder with get_unique. Rows end with the key they answer.
WITH input AS (
  SELECT j.*, coalesce(j.at, timezone('UTC', now()) + make_interval(secs => coalesce(j.delay, 0))) AS due
  FROM ROWS FROM (json_to_recordset(%(jobs)s::json)
    AS (queue text, worker text, args jsonb, meta jsonb, tags text[], priority int,
        max_attempts int, at timestamp, delay float8, ukey text, period float8, uts text,
        replace jsonb)) WITH ORDINALITY
    AS j(queue, worker, args, meta, tags, priority, max_attempts, at, delay, ukey, period,
         uts, replace, ord)
), retired AS (
  UPDATE {prefix}.oban_jobs
  -- (a concurrent retirer may have taken the key first: then there is nothing to move)
  SET meta = (meta - 'uniq_key' - 'uniq_states')
             || CASE WHEN meta ? 'uniq_key'
                     THEN jsonb_build_object('uniq_retired', meta -> 'uniq_key')
                     ELSE '{}' END
  WHERE id IN (
    SELECT o.id FROM input i JOIN {prefix}.oban_jobs o ON o.meta ->> 'uniq_key' = i.ukey
    WHERE i.period IS NOT NULL AND {uniq_pred:o.}
      -- older than the new job's time minus the period, as Oban counts it (retiring
      -- on both sides would let a third job retire the second and duplicate the first)
      AND CASE WHEN i.uts = 'scheduled_at' THEN o.scheduled_at ELSE o.inserted_at END
          < CASE WHEN i.uts = 'scheduled_at' THEN i.due ELSE timezone('UTC', now()) END
            - make_interval(secs => i.period))
  RETURNING id
), ins AS (
  INSERT INTO {prefix}.oban_jobs AS j
    (state, queue, worker, args, meta, tags, priority, max_attempts, scheduled_at)
  SELECT CASE WHEN due > timezone('UTC', now()) THEN 'scheduled' ELSE 'available' END
           ::{prefix}.oban_job_state,
         queue, worker, args, meta, coalesce(tags, '{}'), priority, max_attempts, due
  -- the count makes the retiring finish before the first row goes in
  FROM input, (SELECT count(*) FROM retired) r ORDER BY ord
  ON CONFLICT ((meta ->> 'uniq_key')) WHERE {uniq_pred:}
  DO UPDATE SET (args, max_attempts, meta, priority, queue, scheduled_at, state, tags, worker) = (
    SELECT CASE WHEN f ? 'args' THEN EXCLUDED.args ELSE j.args END,
           CASE WHEN f ? 'max_attempts' THEN greatest(EXCLUDED.max_attempts, j.attempt)
                ELSE j.max_attempts END,
           CASE WHEN f ? 'meta' THEN EXCLUDED.meta ELSE j.meta END,
           CASE WHEN f ? 'priority' THEN EXCLUDED.priority ELSE j.priority END,
           CASE WHEN f ? 'queue' THEN EXCLUDED.queue ELSE j.queue END,
           CASE WHEN f ? 'scheduled_at' THEN EXCLUDED.scheduled_at ELSE j.scheduled_at END,
           CASE WHEN f ? 'scheduled_at' AND j.state IN ('available', 'scheduled')
                THEN EXCLUDED.state ELSE j.state END,
           CASE WHEN f ? 'tags' THEN EXCLUDED.tags ELSE j.tags END,
           CASE WHEN f ? 'worker' THEN EXCLUDED.worker ELSE j.worker END
    FROM (SELECT i.replace -> {state_text:j.} AS f FROM input i
          WHERE i.ukey = EXCLUDED.meta ->> 'uniq_key') spec)
  WHERE (SELECT i.replace ? {state_text:j.} FROM input i
         WHERE i.ukey = EXCLUDED.meta ->> 'uniq_key')
  RETURNING {jcols}, j.xmax = 0 AS inserted, j.meta ->> 'uniq_key' AS ukey
), notified AS (
  SELECT count(pg_notify(%(channel)s, '{"queue":' || to_json(q.queue)::text || '}')) AS n
  FROM (SELECT DISTINCT queue FROM ins WHERE state = 'available') q
  WHERE %(channel)s::text IS NOT NULL
)
SELECT ins.* FROM ins, notified ORDER BY ins.id;

-- name: get_unique
-- The jobs that hold these unique keys now.
SELECT {cols}, false AS inserted, meta ->> 'uniq_key' AS ukey FROM {prefix}.oban_jobs
WHERE meta ->> 'uniq_key' = ANY(%(keys)s::text[]) AND {uniq_pred:};

-- name: find_duplicates
-- Before insert_unique: for each unique job, a row without a Kerrera key (inserted by
-- Elixir Oban, or plainly) that Oban would call its duplicate (see Unique.lookup). Each
-- branch of the union starts from one index (GIN on args or meta, or the state/queue
-- btree) and the planner keeps only the `lead` one, the same for every job here. Its own
-- small statement, so that insert_unique keeps a plan that does not depend on `lead`.
-- Only a read, as Oban's check is: an Elixir insert of the same job that commits
-- meanwhile is not seen, and both rows stay (engine/unique.py says why).
WITH lookup AS (
  SELECT l.*, coalesce(l.at, timezone('UTC', now()) + make_interval(secs => coalesce(l.delay, 0))) AS due
  FROM json_to_recordset(%(lookups)s::json)
    AS l(ukey text, worker text, queue text, args jsonb, meta jsonb, subset bool,
         states text[], period float8, uts text, at timestamp, delay float8)
  -- (tells the planner how many rows come: it would assume 100)
  LIMIT %(n)s
)
SELECT {jcols}, false AS inserted, l.ukey
FROM lookup l CROSS JOIN LATERAL (
  SELECT c.* FROM (
    SELECT * FROM {prefix}.oban_jobs WHERE %(lead)s::text = 'args' AND args @> l.args
    UNION ALL
    SELECT * FROM {prefix}.oban_jobs WHERE %(lead)s::text = 'meta' AND meta @> l.meta
    UNION ALL
    SELECT * FROM {prefix}.oban_jobs WHERE %(lead)s::text = 'queue' AND queue = l.queue
    UNION ALL
    SELECT * FROM {prefix}.oban_jobs WHERE %(lead)s::text = 'state'
  ) c
  WHERE c.state = ANY(l.states::{prefix}.oban_job_state[])
    AND NOT coalesce(c.meta ?| ARRAY['uniq_key', 'uniq_retired'], false)
    AND c.worker = coalesce(l.worker, c.worker)
    AND c.queue = coalesce(l.queue, c.queue)
    -- as Oban compares: with keys, the row contains the job's values of them; without,
    -- the whole value is equal (less the keys that never count; a row whose value is
    -- not an object, which neither side writes, is no duplicate and raises no error)
    AND (l.args IS NULL OR CASE WHEN l.subset THEN c.args @> l.args
                                WHEN jsonb_typeof(c.args) = 'object'
                                THEN c.args - %(unkeyed)s::text[] = l.args END)
    AND (l.meta IS NULL OR CASE WHEN l.subset THEN c.meta @> l.meta
                                WHEN jsonb_typeof(c.meta) = 'object'
                                THEN c.meta - %(unkeyed)s::text[] = l.meta END)
    -- within the period, counted as insert_unique's retiring counts it
    AND (l.period IS NULL
         OR CASE WHEN l.uts = 'scheduled_at' THEN c.scheduled_at ELSE c.inserted_at END
            >= CASE WHEN l.uts = 'scheduled_at' THEN l.due ELSE timezone('UTC', now()) END
               - make_interval(secs => l.period))
  LIMIT 1
) j;

-- name: replace_duplicates
-- Duplicates that find_duplicates returned, overwritten as insert_unique overwrites a
-- holder of the key: only where the new job's `replace` names the state the row is in
-- now. Kerrera's key never enters the row, which stays outside the unique index.
WITH input AS (
  SELECT i.*, coalesce(i.at, timezone('UTC', now()) + make_interval(secs => coalesce(i.delay, 0))) AS due
  FROM json_to_recordset(%(jobs)s::json)
    AS i(id bigint, ukey text, queue text, worker text, args jsonb, meta jsonb, tags text[],
         priority int, max_attempts int, at timestamp, delay float8, replace jsonb)
), replaced AS (
  UPDATE {prefix}.oban_jobs j
  SET (args, max_attempts, meta, priority, queue, scheduled_at, state, tags, worker) = (
    SELECT CASE WHEN f ? 'args' THEN i.args ELSE j.args END,
           CASE WHEN f ? 'max_attempts' THEN greatest(i.max_attempts, j.attempt)
                ELSE j.max_attempts END,
           CASE WHEN f ? 'meta' THEN i.meta ELSE j.meta END,
           CASE WHEN f ? 'priority' THEN i.priority ELSE j.priority END,
           CASE WHEN f ? 'queue' THEN i.queue ELSE j.queue END,
           CASE WHEN f ? 'scheduled_at' THEN i.due ELSE j.scheduled_at END,
           CASE WHEN f ? 'scheduled_at' AND j.state IN ('available', 'scheduled')
                THEN (CASE WHEN i.due > timezone('UTC', now()) THEN 'scheduled'
                           ELSE 'available' END)::{prefix}.oban_job_state
                ELSE j.state END,
           CASE WHEN f ? 'tags' THEN coalesce(i.tags, '{}') ELSE j.tags END,
           CASE WHEN f ? 'worker' THEN i.worker ELSE j.worker END
    FROM (SELECT i.replace -> {state_text:j.} AS f) spec)
  FROM input i
  WHERE j.id = i.id AND i.replace ? {state_text:j.}
  RETURNING {jcols}, false AS inserted, i.ukey
), notified AS (
  SELECT count(pg_notify(%(channel)s, '{"queue":' || to_json(q.queue)::text || '}')) AS n
  FROM (SELECT DISTINCT queue FROM replaced WHERE state = 'available') q
  WHERE %(channel)s::text IS NOT NULL
)
SELECT replaced.* FROM replaced, notified ORDER BY replaced.id;

-- name: reserve_ids
-- Bulk insert by COPY, step 1 (inside one transaction): draw the ids, and read the
-- transaction's timestamp, which is what the inserted_at/scheduled_at defaults will use.
SELECT string_agg(id::text, ',' ORDER BY id), timezone('UTC', now())
FROM (SELECT nextval(pg_get_serial_sequence('{prefix}.oban_jobs', 'id')) AS id
      FROM generate_series(1, %(n)s)) ids;

-- name: copy_jobs
-- Bulk insert by COPY, step 2: every other column takes its default (available, now).
COPY {prefix}.oban_jobs (id, queue, worker, args, meta, tags, priority, max_attempts)
FROM STDIN;

-- name: notify_queues
-- Bulk insert by COPY, step 3, still in the transaction: wake each queue's producers.
SELECT count(pg_notify(%(channel)s, '{"queue":' || to_json(q)::text || '}'))
FROM unnest(%(queues)s::text[]) AS q;

-- name: ack_and_fetch
-- Acks of finished jobs and the next fetch, in one statement and one round trip: the
-- producer's `fetch_jobs`, and `ack_jobs` (demand 0) when there is nothing to fetch.
-- Every ack is guarded by state, attempt and owner (the producer that fetched the job, as
-- in attempted_by[2]) so that a stale executor never overwrites a job that was rescued,
-- cancelled or re-run meanwhile, even when that run's attempt number was rolled back
-- (Oban Pro's snooze, a manual edit). With demand 0 it only acks.
WITH completed AS (
  UPDATE {prefix}.oban_jobs j
  SET state = 'completed', completed_at = timezone('UTC', now())
  FROM unnest(%(done_ids)s::bigint[], %(done_attempts)s::int[]) AS a(id, attempt)
  WHERE j.id = a.id AND j.state = 'executing' AND j.attempt = a.attempt
    AND j.attempted_by[2] = %(owner)s
  RETURNING j.id
), finished AS (
  UPDATE {prefix}.oban_jobs j
  SET state = a.state::{prefix}.oban_job_state,
      completed_at = CASE WHEN a.state = 'completed' THEN timezone('UTC', now()) ELSE j.completed_at END,
      discarded_at = CASE WHEN a.state = 'discarded' THEN timezone('UTC', now()) ELSE j.discarded_at END,
      cancelled_at = CASE WHEN a.state = 'cancelled' THEN timezone('UTC', now()) ELSE j.cancelled_at END,
      scheduled_at = CASE WHEN a.delay IS NULL THEN j.scheduled_at
                          ELSE timezone('UTC', now()) + make_interval(secs => a.delay) END,
      max_attempts = j.max_attempts + CASE WHEN a.snooze THEN 1 ELSE 0 END,
      errors = CASE WHEN a.error IS NULL THEN j.errors ELSE j.errors || a.error END,
      meta = CASE WHEN a.meta IS NULL THEN j.meta ELSE coalesce(j.meta, '{}') || a.meta END
  FROM json_to_recordset(%(outcomes)s::json)
    AS a(id bigint, attempt int, state text, delay float8, snooze bool, error jsonb, meta jsonb)
  WHERE j.id = a.id AND j.state = 'executing' AND j.attempt = a.attempt
    AND j.attempted_by[2] = %(owner)s
  RETURNING j.id
), locked AS (
  SELECT id FROM {prefix}.oban_jobs
  WHERE state = 'available' AND queue = %(queue)s
  ORDER BY priority, scheduled_at, id
  LIMIT %(demand)s
  FOR UPDATE SKIP LOCKED
), acked AS (
  SELECT (SELECT count(*) FROM completed) + (SELECT count(*) FROM finished) AS n
)
UPDATE {prefix}.oban_jobs j
SET state = 'executing', attempt = j.attempt + 1,
    -- a row made available by hand with its attempts spent still gets its run, rather
    -- than failing the attempt_range check and with it every fetch of the queue
    max_attempts = greatest(j.max_attempts, j.attempt + 1),
    attempted_at = timezone('UTC', now()),
    attempted_by = ARRAY[%(node)s::text, %(producer)s::text]
FROM locked, acked
WHERE j.id = locked.id
RETURNING {jcols};

-- name: release_jobs
-- Put jobs that were interrupted by shutdown back to available without spending their
-- attempt, and wake the queue's producers. As with a snooze, max_attempts grows by one
-- and attempt keeps counting runs: rolling attempt back would let the interrupted run's
-- late ack pass the guard of the next run.
WITH released AS (
  UPDATE {prefix}.oban_jobs j
  SET state = 'available', max_attempts = j.max_attempts + 1,
      -- counted, so that `kerrera jobs show` can tell runs that spent no attempt
      meta = coalesce(j.meta, '{}') || jsonb_build_object(
        'released', coalesce((j.meta->>'released')::int, 0) + 1)
  FROM unnest(%(ids)s::bigint[], %(attempts)s::int[]) AS a(id, attempt)
  WHERE j.id = a.id AND j.state = 'executing' AND j.attempt = a.attempt
    AND j.attempted_by[2] = %(owner)s
  RETURNING j.id, j.queue
), notified AS (
  SELECT count(pg_notify(%(channel)s, '{"queue":' || to_json(q.queue)::text || '}')) AS n
  FROM (SELECT DISTINCT queue FROM released) q
  WHERE %(channel)s::text IS NOT NULL
)
-- (the queues come back for an in-process notifier to wake)
SELECT released.id, released.queue FROM released, notified;

-- name: reclaim_jobs
-- After a fetch whose reply was lost (the connection died after the commit), jobs may be
-- marked executing by this producer without it knowing. Only this producer can hold
-- them, so anything it is not running goes back to available, attempt not spent.
WITH reclaimed AS (
  UPDATE {prefix}.oban_jobs
  SET state = 'available', max_attempts = max_attempts + 1
  WHERE state = 'executing' AND queue = %(queue)s AND attempted_by[2] = %(producer)s
    AND NOT (id = ANY(%(running)s::bigint[]))
  RETURNING id
)
SELECT count(*) FROM reclaimed;

-- name: stage_jobs
-- Move due scheduled and retryable jobs to available, in bounded batches, and notify
-- each queue that received jobs (in the same transaction; channel NULL: not here).
WITH due AS (
  SELECT id FROM {prefix}.oban_jobs
  WHERE state IN ('scheduled', 'retryable') AND scheduled_at <= timezone('UTC', now())
  ORDER BY scheduled_at, id
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
), staged AS (
  UPDATE {prefix}.oban_jobs j SET state = 'available'
  FROM due WHERE j.id = due.id
  RETURNING j.queue
), counted AS (
  SELECT queue, count(*) AS n FROM staged GROUP BY queue
)
SELECT queue, n,
       CASE WHEN %(channel)s::text IS NOT NULL
            THEN pg_notify(%(channel)s, '{"queue":' || to_json(queue)::text || '}')::text END
FROM counted;

-- name: complete_job
-- Complete a running job inside the caller's transaction (exactly-once effect): guarded
-- like every ack, so it succeeds only while this attempt still owns the job, and the
-- executor's own ack afterwards matches nothing.
UPDATE {prefix}.oban_jobs
SET state = 'completed', completed_at = timezone('UTC', now())
WHERE id = %(id)s AND state = 'executing' AND attempt = %(attempt)s
  AND attempted_by[2] IS NOT DISTINCT FROM %(owner)s
RETURNING id;

-- name: heartbeat
-- Every node, every few seconds: its producers are alive (one statement for all), with
-- what each reports about itself (limit, running, paused) for check_all_queues.
INSERT INTO {prefix}.kerrera_producers AS p (uuid, node, queue, state)
SELECT u, n, q, s::jsonb
FROM unnest(%(uuids)s::text[], %(nodes)s::text[], %(queues)s::text[], %(states)s::text[])
  AS x(u, n, q, s)
ON CONFLICT (uuid) DO UPDATE SET updated_at = timezone('UTC', now()), state = EXCLUDED.state;

-- name: forget_producers
DELETE FROM {prefix}.kerrera_producers WHERE uuid = ANY(%(uuids)s::text[]);

-- name: rescue_jobs
-- The lifeline. Jobs executing under a producer whose heartbeat expired go back to
-- available (or are discarded when their attempts are spent), counted in meta.rescued.
-- Jobs of producers that never heartbeated here (an Elixir node, or a row lost) are
-- rescued only after rescue_after seconds, so long jobs elsewhere are left alone.
WITH expired AS (
  DELETE FROM {prefix}.kerrera_producers
  WHERE updated_at < timezone('UTC', now()) - make_interval(secs => %(ttl)s)
  RETURNING uuid
), orphans AS (
  SELECT j.id FROM {prefix}.oban_jobs j
  WHERE j.state = 'executing'
    AND (j.attempted_by[2] IN (SELECT uuid FROM expired)
         OR (j.attempted_at < timezone('UTC', now()) - make_interval(secs => %(rescue_after)s)
             AND NOT EXISTS (SELECT 1 FROM {prefix}.kerrera_producers p
                             WHERE p.uuid = j.attempted_by[2])))
  FOR UPDATE SKIP LOCKED
), rescued AS (
  UPDATE {prefix}.oban_jobs j
  SET state = CASE WHEN j.attempt >= j.max_attempts THEN 'discarded'
                   ELSE 'available' END::{prefix}.oban_job_state,
      discarded_at = CASE WHEN j.attempt >= j.max_attempts THEN timezone('UTC', now())
                          ELSE j.discarded_at END,
      meta = coalesce(j.meta, '{}') || jsonb_build_object(
        'rescued', coalesce((j.meta->>'rescued')::int, 0) + 1)
  FROM orphans WHERE j.id = orphans.id
  RETURNING j.queue, j.state
), notified AS (
  SELECT count(pg_notify(%(channel)s, '{"queue":' || to_json(q.queue)::text || '}')) AS n
  FROM (SELECT DISTINCT queue FROM rescued WHERE state = 'available') q
  WHERE %(channel)s::text IS NOT NULL
)
SELECT (SELECT count(*) FROM rescued), (SELECT count(*) FROM expired),
       -- the queues that got jobs back, for an in-process notifier
       (SELECT coalesce(array_agg(DISTINCT queue), '{}') FROM rescued WHERE state = 'available')
FROM notified;

-- name: get_jobs
SELECT {cols} FROM {prefix}.oban_jobs WHERE id = ANY(%(ids)s::bigint[]) ORDER BY id;

-- name: retry_jobs
-- Any job that is not running goes back to available now; a job whose attempts are spent
-- gets one more. A unique job whose key another job holds meanwhile, or that an older
-- job retried here shares, gives its key up (renamed uniq_retired): a retry by hand
-- should not fail on the unique index. (A unique insert committing concurrently can
-- still collide; the engine then runs the statement again.)
WITH retried AS (
  UPDATE {prefix}.oban_jobs j
  SET state = 'available', scheduled_at = timezone('UTC', now()),
      max_attempts = greatest(j.max_attempts, j.attempt + 1),
      completed_at = NULL, cancelled_at = NULL, discarded_at = NULL,
      -- (only unique jobs look: a plain retry of many jobs stays linear)
      meta = CASE WHEN j.meta ? 'uniq_key' AND EXISTS (
                   SELECT 1 FROM {prefix}.oban_jobs o
                   WHERE o.meta ->> 'uniq_key' = j.meta ->> 'uniq_key' AND o.id <> j.id
                     AND ({uniq_pred:o.}
                          -- of jobs retried together, the oldest keeps the key
                          OR (o.id = ANY(%(ids)s::bigint[]) AND o.state <> 'executing'
                              AND o.id < j.id)))
                  THEN (j.meta - 'uniq_key' - 'uniq_states')
                       || jsonb_build_object('uniq_retired', j.meta -> 'uniq_key')
                  ELSE j.meta END
  WHERE j.id = ANY(%(ids)s::bigint[]) AND j.state <> 'executing'
    -- a workflow step waiting on its dependencies is released by them, not by a retry
    AND NOT (j.state = 'suspended' AND j.meta ? 'workflow_id')
  RETURNING {jcols}
), notified AS (
  SELECT count(pg_notify(%(channel)s, '{"queue":' || to_json(q.queue)::text || '}')) AS n
  FROM (SELECT DISTINCT queue FROM retried) q
  WHERE %(channel)s::text IS NOT NULL
)
SELECT retried.* FROM retried, notified ORDER BY retried.id;

-- name: cancel_jobs
-- Cancel jobs that are not finished. Executing ones are marked cancelled here (so their
-- executor's guarded ack cannot complete them) and a pkill signal asks the node that
-- runs them to stop them. CTEs read the snapshot from before the update, so "marked"
-- sees what state the jobs were in. Each row ends with whether its job is signalled
-- (for an in-process notifier, when the signal channel is NULL and nothing is sent here).
WITH cancelled AS (
  UPDATE {prefix}.oban_jobs
  SET state = 'cancelled', cancelled_at = timezone('UTC', now())
  WHERE id = ANY(%(ids)s::bigint[])
    AND state NOT IN ('completed', 'discarded', 'cancelled')
  RETURNING {cols}
), marked AS (
  -- Before the statement the job may still have been available while a fetch claimed
  -- it: signal those too (a node not running the job ignores the signal).
  SELECT c.*, before.state IN ('executing', 'available') AS live
  FROM cancelled c JOIN {prefix}.oban_jobs before ON before.id = c.id
), signalled AS (
  SELECT count(pg_notify(%(signal)s, '{"action":"pkill","job_id":' || m.id || '}')) AS n
  FROM marked m WHERE m.live AND %(signal)s::text IS NOT NULL
)
SELECT marked.* FROM marked, signalled ORDER BY marked.id;

-- name: delete_jobs
-- Delete jobs that are not running (a running job is left alone: cancel it first).
DELETE FROM {prefix}.oban_jobs
WHERE id = ANY(%(ids)s::bigint[]) AND state <> 'executing'
RETURNING {cols};

-- name: notify
-- One or many notifications on one channel, in one statement.
SELECT count(pg_notify(%(channel)s, p)) FROM unnest(%(payloads)s::text[]) AS p;

-- name: elect_leader
-- Take the lease when nobody holds it or it expired, renew it when we hold it. One
-- statement, so two nodes can never both win. Our identity is node + started_at (the
-- instance's start), so two processes given the same node name still elect one leader.
-- Returns a row only when this instance leads.
INSERT INTO {prefix}.oban_peers AS p (name, node, started_at, expires_at)
VALUES (%(name)s, %(node)s, %(started_at)s,
        timezone('UTC', now()) + make_interval(secs => %(lease)s))
ON CONFLICT (name) DO UPDATE
SET node = EXCLUDED.node, started_at = EXCLUDED.started_at, expires_at = EXCLUDED.expires_at
WHERE (p.node = EXCLUDED.node AND p.started_at = EXCLUDED.started_at)
   OR p.expires_at < timezone('UTC', now())
RETURNING p.node;

-- name: resign_leader
-- Give the lease up and tell the others at once (Oban's `leader` payload); returns the
-- name when a lease was given up (channel NULL: the engine hands the payload over).
WITH gone AS (
  DELETE FROM {prefix}.oban_peers
  WHERE name = %(name)s AND node = %(node)s AND started_at = %(started_at)s
  RETURNING name
)
SELECT name,
       CASE WHEN %(channel)s::text IS NOT NULL
            THEN pg_notify(%(channel)s, json_build_object('down', name)::text)::text END
FROM gone;

-- name: get_leader
SELECT node, started_at, expires_at FROM {prefix}.oban_peers
WHERE name = %(name)s AND expires_at >= timezone('UTC', now());

-- name: prune_jobs
-- One bounded batch of finished jobs older than their state's max age (NULL: kept).
WITH doomed AS (
  SELECT id FROM {prefix}.oban_jobs
  WHERE (state = 'completed'
         AND completed_at < timezone('UTC', now()) - make_interval(secs => %(completed)s))
     OR (state = 'cancelled'
         AND cancelled_at < timezone('UTC', now()) - make_interval(secs => %(cancelled)s))
     OR (state = 'discarded'
         AND discarded_at < timezone('UTC', now()) - make_interval(secs => %(discarded)s))
  LIMIT %(limit)s
  FOR UPDATE SKIP LOCKED
)
DELETE FROM {prefix}.oban_jobs j USING doomed WHERE j.id = doomed.id
RETURNING j.state::text;

-- name: seed_cron
-- A cron entry seen for the first time starts from now: no tick before it is owed.
INSERT INTO {prefix}.kerrera_cron (name, last_tick)
SELECT n, timezone('UTC', now()) FROM unnest(%(names)s::text[]) AS n
ON CONFLICT (name) DO NOTHING;

-- name: lock_cron
-- Inside the cron transaction: the entries' last evaluated instants, locked, so that the
-- ticks after them are inserted by exactly one transaction even if two nodes both
-- believe they lead.
SELECT name, last_tick, timezone('UTC', now()) FROM {prefix}.kerrera_cron
WHERE name = ANY(%(names)s::text[]) ORDER BY name FOR UPDATE;

-- name: advance_cron
UPDATE {prefix}.kerrera_cron
SET last_tick = greatest(last_tick, %(until)s), updated_at = timezone('UTC', now())
WHERE name = ANY(%(names)s::text[]);

-- name: job_indexes
-- The indexes to rebuild, and leftovers of interrupted concurrent rebuilds to drop.
SELECT format('%%I.%%I', n.nspname, c.relname),
       NOT i.indisvalid AND c.relname ~ '_cc(new|old)[0-9]*$'
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE i.indrelid = '{prefix}.oban_jobs'::regclass
ORDER BY c.relname;

-- name: set_queue_state
-- Persist an operator's queue command and announce it in the same transaction. A
-- command for every node (node '') also clears that field on per-node rows, so the
-- latest command wins. The announcement comes first on Kerrera's control channel
-- (`control` plus the idents signalled: Kerrera nodes re-read the table, and know the
-- Oban signals that follow for this command's own), then as Oban's exact signal payload
-- once per ident: `idents`, plus `<name>.<node>` for every instance name in oban_peers
-- when `peers` (Elixir nodes expect their own instance name in a node's ident). Returns
-- each notification (1 control, 2 signal) in the order sent; with NULL channels nothing
-- is sent here, and the engine hands them to an in-process notifier instead.
WITH cleared AS (
  UPDATE {prefix}.kerrera_queues
  SET paused = CASE WHEN %(set_paused)s THEN NULL ELSE paused END,
      "limit" = CASE WHEN %(set_limit)s THEN NULL ELSE "limit" END,
      running = CASE WHEN %(set_running)s THEN NULL ELSE running END,
      updated_at = timezone('UTC', now())
  WHERE %(node)s = '' AND node <> '' AND queue = %(queue)s
), saved AS (
  INSERT INTO {prefix}.kerrera_queues AS q (queue, node, paused, "limit", running)
  VALUES (%(queue)s, %(node)s, %(paused)s, %(limit)s, %(running)s)
  ON CONFLICT (queue, node) DO UPDATE
  SET paused = CASE WHEN %(set_paused)s THEN EXCLUDED.paused ELSE q.paused END,
      "limit" = CASE WHEN %(set_limit)s THEN EXCLUDED."limit" ELSE q."limit" END,
      running = CASE WHEN %(set_running)s THEN EXCLUDED.running ELSE q.running END,
      updated_at = timezone('UTC', now())
  RETURNING 1
), idents AS (
  SELECT ident FROM unnest(%(idents)s::text[]) AS ident
  UNION
  SELECT name || '.' || %(node)s FROM {prefix}.oban_peers WHERE %(peers)s
), notices AS (
  SELECT 1 AS n, %(control_channel)s::text AS channel,
         (%(control)s::jsonb || jsonb_build_object(
           'idents', (SELECT jsonb_agg(ident ORDER BY ident) FROM idents)))::text AS payload
  FROM saved
  UNION ALL
  SELECT 2, %(channel)s::text, %(head)s || to_json(ident)::text || %(tail)s
  FROM saved, idents
)
-- pg_notify is volatile, so it runs after the sort: the control message goes first.
SELECT n, payload,
       CASE WHEN channel IS NOT NULL THEN pg_notify(channel, payload)::text END
FROM notices ORDER BY n;

-- name: instance_names
-- Instance names that lead in oban_peers (Elixir's "Oban", "MyApp.Oban", Kerrera's own):
-- a signal for one node is addressed to "<instance name>.<node>".
SELECT DISTINCT name FROM {prefix}.oban_peers;

-- name: queue_states
SELECT queue, node, paused, "limit", running FROM {prefix}.kerrera_queues
WHERE node = '' OR node = %(node)s;

-- name: producer_states
-- What every live producer last reported (check_all_queues).
SELECT node, queue, uuid, started_at, updated_at, state::text FROM {prefix}.kerrera_producers
WHERE updated_at >= timezone('UTC', now()) - make_interval(secs => %(ttl)s)
ORDER BY node, queue;

-- name: db_now
SELECT timezone('UTC', now());


-- name: write_progress
-- A running job's latest progress, guarded like an ack; published only when written
-- (channel NULL: the engine hands the message to an in-process notifier instead).
WITH written AS (
  UPDATE {prefix}.oban_jobs
  SET meta = meta || jsonb_build_object('progress', %(progress)s::jsonb)
  WHERE id = %(id)s AND state = 'executing' AND attempt = %(attempt)s
  RETURNING id
)
SELECT id,
       CASE WHEN %(channel)s::text IS NOT NULL
            THEN pg_notify(%(channel)s, %(payload)s)::text END
FROM written;
