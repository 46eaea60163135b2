-- Statements of chunk workers (see kerrera/engine/chunks.py). {prefix}, {jcols}: as in
-- queries.sql.

-- name: fetch_chunk
-- "Fetch more of this worker and partition": claim up to `demand` available jobs of one
-- chunk worker in one queue, in fetch order, for a chunk that a producer is filling. They
-- are marked executing under that producer exactly as `ack_and_fetch` marks what it
-- claims, so that its ledger, its acks' owner guard, its reclaim and the lifeline cover
-- them the same way. `by` names the args keys of the partition (empty: no partition) and
-- `partition` their values as a JSON array, a missing key counting as null.
WITH locked AS (
  SELECT o.id FROM {prefix}.oban_jobs o
  WHERE o.state = 'available' AND o.queue = %(queue)s AND o.worker = %(worker)s
    AND (cardinality(%(by)s::text[]) = 0
         OR (SELECT jsonb_agg(coalesce(o.args -> b.key, 'null'::jsonb) ORDER BY b.pos)
             FROM unnest(%(by)s::text[]) WITH ORDINALITY AS b(key, pos))
            = %(partition)s::jsonb)
  ORDER BY o.priority, o.scheduled_at, o.id
  LIMIT %(demand)s
  FOR UPDATE SKIP LOCKED
)
UPDATE {prefix}.oban_jobs j
SET state = 'executing', attempt = j.attempt + 1,
    max_attempts = greatest(j.max_attempts, j.attempt + 1),
    attempted_at = timezone('UTC', now()),
    attempted_by = ARRAY[%(node)s::text, %(producer)s::text]
FROM locked
WHERE j.id = locked.id
RETURNING {jcols};
