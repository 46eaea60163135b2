-- Batches and chains (see migrations/compose.py: the triggers do the tracking; these
-- statements create, extend, close, read and release).

-- name: batch_create
-- A new batch row with its members counted up front (the insert that follows in the
-- same transaction adds them). Nothing comes back when the id is taken.
INSERT INTO {prefix}.kerrera_batches (batch_id, open, callbacks, total)
VALUES (%(batch_id)s, %(open)s, %(callbacks)s::jsonb, %(n)s)
ON CONFLICT (batch_id) DO NOTHING
RETURNING batch_id;

-- name: batch_append
-- Count appended members; the row lock taken here orders the append against acks of the
-- batch's jobs. Nothing comes back when the batch is unknown or closed.
UPDATE {prefix}.kerrera_batches
SET total = total + %(n)s
WHERE batch_id = %(batch_id)s AND open
RETURNING batch_id;

-- name: batch_close
-- Seal the batch (idempotent); then batch_fire inserts the callbacks now due.
UPDATE {prefix}.kerrera_batches
SET open = false, closed_at = coalesce(closed_at, timezone('UTC', now()))
WHERE batch_id = %(batch_id)s
RETURNING batch_id;

-- name: batch_fire
-- Insert the callbacks due for the batch (its row is locked by the statement before).
SELECT {prefix}.kerrera_batch_fire(b, NULL) FROM {prefix}.kerrera_batches b
WHERE batch_id = %(batch_id)s;

-- name: batch_status
SELECT batch_id, open, total, attempted, completed, cancelled, discarded,
       fired, ARRAY(SELECT jsonb_object_keys(callbacks) ORDER BY 1), inserted_at, closed_at
FROM {prefix}.kerrera_batches WHERE batch_id = %(batch_id)s;

-- name: batch_list
-- The newest batches for the dashboard, LIMIT'd, read backwards through the index on
-- (inserted_at, batch_id).
SELECT batch_id, open, total, attempted, completed, cancelled, discarded,
       fired, ARRAY(SELECT jsonb_object_keys(callbacks) ORDER BY 1), inserted_at, closed_at
FROM {prefix}.kerrera_batches
ORDER BY inserted_at DESC, batch_id DESC
LIMIT %(limit)s;

-- name: chain_status
-- (the count of waiting links goes through the index of suspended links)
SELECT chain_id, seq, active_id, held_by,
       (SELECT count(*) FROM {prefix}.oban_jobs
        WHERE state = 'suspended' AND meta ? 'chain_id' AND meta ->> 'chain_id' = k.chain_id),
       inserted_at
FROM {prefix}.kerrera_chains k WHERE chain_id = %(chain_id)s;

-- name: chain_unhold
-- Let a held chain go on: forget the failed link that held it (returned), and say
-- whether no link runs, so that the next one may be released (chain_release).
UPDATE {prefix}.kerrera_chains k SET held_by = NULL
FROM (SELECT held_by FROM {prefix}.kerrera_chains WHERE chain_id = %(chain_id)s FOR UPDATE) prev
WHERE k.chain_id = %(chain_id)s
RETURNING prev.held_by,
          k.active_id IS NULL OR NOT {prefix}.kerrera_chain_running(k.active_id);

-- name: chain_release
-- Release the next link and record it as the one running (NULL: none was waiting).
UPDATE {prefix}.kerrera_chains SET active_id = {prefix}.kerrera_chain_release(%(chain_id)s)
WHERE chain_id = %(chain_id)s
RETURNING active_id;
