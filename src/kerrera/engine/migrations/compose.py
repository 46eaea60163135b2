"""Migration 7: batches and chains, kept by triggers on `oban_jobs`.

A trigger runs in the transaction that changes a job's state, whoever changes it (a
Kerrera ack, the lifeline, an operator's cancel, an Elixir node), so a batch callback or
the release of a chain's next link can be neither lost nor doubled by a crash. Each
trigger carries a WHEN clause on its own meta key: a job outside any batch or chain pays
that test and nothing else.

Batches: `kerrera_batches` holds one row per batch with its counts: members attempted
(their first outcome is written: a BEFORE trigger marks it in `meta.batch_ran`),
completed, cancelled and discarded. A change of a member's state that moves a count
adjusts them in one UPDATE of that row, which also serialises concurrent acks of one
batch; a fetch or a rescue moves none and takes no lock. Members are counted by the
insert itself (the engine adds to `total`), so there is no insert trigger for batches.
Callbacks fire once each: the names fired are kept in the row, read and written under
its lock.

Chains: `kerrera_chains` holds one row per partition: the last sequence number, the
link that may run now (`active_id`) and the failed link holding the chain, if any. The
BEFORE INSERT trigger stamps `chain_seq` and makes the link `suspended` when the active
link is unfinished, another waits, or the chain is held; the ack of the active link
releases the suspended link with the lowest `chain_seq` (an index of suspended links by
chain finds it without a scan, and tells whether any waits). No count is kept: a count
would drift when an insert that ran the trigger then hit a unique conflict, or when an
operator re-runs an old link; checking the active link by id cannot.

Jobs the triggers make available (callbacks, released links) are announced on the
insert channel, so producers wake at once; with an in-process notifier (no LISTEN) the
producers' poll interval picks them up.
"""

from __future__ import annotations

from typing import Any

from kerrera.engine.migrations.steps import _build_concurrently

#: Index of suspended chain links: the release finds the next one through it.
CHAIN_INDEX = "kerrera_jobs_chain_next_index"

TABLES = """
CREATE TABLE IF NOT EXISTS {p}.kerrera_batches (
  batch_id text PRIMARY KEY,
  open boolean NOT NULL DEFAULT false,
  callbacks jsonb NOT NULL DEFAULT '{{}}',
  fired text[] NOT NULL DEFAULT '{{}}',
  total bigint NOT NULL DEFAULT 0,
  attempted bigint NOT NULL DEFAULT 0,
  completed bigint NOT NULL DEFAULT 0,
  cancelled bigint NOT NULL DEFAULT 0,
  discarded bigint NOT NULL DEFAULT 0,
  inserted_at timestamp NOT NULL DEFAULT timezone('UTC', now()),
  closed_at timestamp
);
-- (the dashboard lists the newest batches)
CREATE INDEX IF NOT EXISTS kerrera_batches_inserted_at_index
  ON {p}.kerrera_batches (inserted_at, batch_id);
CREATE TABLE IF NOT EXISTS {p}.kerrera_chains (
  chain_id text PRIMARY KEY,
  seq bigint NOT NULL DEFAULT 0,
  active_id bigint,
  held_by bigint,
  inserted_at timestamp NOT NULL DEFAULT timezone('UTC', now())
);
"""

BATCH_FUNCTIONS = """
-- Insert the callbacks now due for batch `b` (read under its row lock), once each.
-- `event` is the state a member just entered (NULL: none, e.g. on close).
CREATE OR REPLACE FUNCTION {p}.kerrera_batch_fire(b {p}.kerrera_batches, event text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  due text[];
  counts jsonb;
  q text;
BEGIN
  SELECT coalesce(array_agg(name ORDER BY name), '{{}}') INTO due
  FROM jsonb_object_keys(b.callbacks) AS name
  WHERE NOT name = ANY (b.fired) AND (
    (name = event AND event IN ('cancelled', 'discarded', 'retryable'))
    OR (NOT b.open AND (
      (name = 'attempted' AND b.attempted = b.total)
      OR (name = 'completed' AND b.completed = b.total)
      OR (name = 'exhausted' AND b.completed + b.cancelled + b.discarded = b.total))));
  IF cardinality(due) = 0 THEN
    RETURN;
  END IF;
  UPDATE {p}.kerrera_batches SET fired = fired || due WHERE batch_id = b.batch_id;
  counts := jsonb_build_object(
    'total', b.total, 'attempted', b.attempted, 'completed', b.completed,
    'cancelled', b.cancelled, 'discarded', b.discarded);
  FOR q IN
    INSERT INTO {p}.oban_jobs (state, queue, worker, args, meta, tags, priority, max_attempts)
    SELECT 'available', s ->> 'queue', s ->> 'worker',
           coalesce(s -> 'args', '{{}}') || jsonb_build_object(
             'batch_id', b.batch_id, 'callback', name, 'counts', counts),
           coalesce(s -> 'meta', '{{}}') || jsonb_build_object(
             'batch_id', b.batch_id, 'callback', name),
           ARRAY(SELECT jsonb_array_elements_text(coalesce(s -> 'tags', '[]'))),
           coalesce((s ->> 'priority')::int, 0), coalesce((s ->> 'max_attempts')::int, 20)
    FROM unnest(due) AS name, LATERAL (SELECT b.callbacks -> name AS s) spec
    RETURNING queue
  LOOP
    PERFORM pg_notify('{channel}', json_build_object('queue', q)::text);
  END LOOP;
END $$;

-- Before a member's first outcome is written: mark it in its meta (`batch_ran`), so
-- that it is counted as attempted once, however often it runs again. A member that
-- reaches a final state without running (cancelled while waiting) counts too.
CREATE OR REPLACE FUNCTION {p}.kerrera_batch_mark() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  NEW.meta := NEW.meta || '{{"batch_ran": true}}';
  RETURN NEW;
END $$;

-- After a member changes state (or is deleted): adjust the batch's counts in one
-- UPDATE of its row, which serialises concurrent acks of one batch, and fire what
-- became due. A fetch or a rescue changes no count and takes no lock. Callback jobs
-- carry the batch id too (so that they can be found) and are not members.
CREATE OR REPLACE FUNCTION {p}.kerrera_batch_track() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  m jsonb := CASE WHEN TG_OP = 'DELETE' THEN OLD.meta ELSE NEW.meta END;
  gone boolean := TG_OP = 'DELETE';
  ran int := (NOT gone AND NEW.meta ? 'batch_ran')::int - (OLD.meta ? 'batch_ran')::int;
  d_completed int := (NOT gone AND NEW.state = 'completed')::int - (OLD.state = 'completed')::int;
  d_cancelled int := (NOT gone AND NEW.state = 'cancelled')::int - (OLD.state = 'cancelled')::int;
  d_discarded int := (NOT gone AND NEW.state = 'discarded')::int - (OLD.state = 'discarded')::int;
  b {p}.kerrera_batches;
BEGIN
  IF m ? 'callback' OR (NOT gone AND ran = 0 AND d_completed = 0 AND d_cancelled = 0
                        AND d_discarded = 0 AND NEW.state <> 'retryable') THEN
    RETURN NULL;
  END IF;
  UPDATE {p}.kerrera_batches k SET
    total = k.total - gone::int, attempted = k.attempted + ran,
    completed = k.completed + d_completed,
    cancelled = k.cancelled + d_cancelled,
    discarded = k.discarded + d_discarded
  WHERE k.batch_id = m ->> 'batch_id'
  RETURNING * INTO b;
  IF FOUND THEN
    PERFORM {p}.kerrera_batch_fire(b, CASE WHEN gone THEN NULL ELSE NEW.state::text END);
  END IF;
  RETURN NULL;
END $$;
"""

CHAIN_FUNCTIONS = """
-- Make the next suspended link of `cid` runnable and return its id (NULL: none waits).
-- The caller holds the chain's row lock and records the link as the active one.
CREATE OR REPLACE FUNCTION {p}.kerrera_chain_release(cid text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  next_id bigint;
  q text;
  s text;
BEGIN
  PERFORM set_config('kerrera.chain_release', cid, true);  -- (see kerrera_chain_wait)
  UPDATE {p}.oban_jobs j
  SET state = CASE WHEN j.scheduled_at > timezone('UTC', now()) THEN 'scheduled'
                   ELSE 'available' END::{p}.oban_job_state
  WHERE j.id = (
    SELECT id FROM {p}.oban_jobs
    WHERE state = 'suspended' AND meta ? 'chain_id' AND meta ->> 'chain_id' = cid
    ORDER BY (meta ->> 'chain_id'), ((meta ->> 'chain_seq')::bigint)
    LIMIT 1)
  RETURNING j.id, j.queue, j.state::text INTO next_id, q, s;
  PERFORM set_config('kerrera.chain_release', '', true);
  IF s = 'available' THEN
    PERFORM pg_notify('{channel}', json_build_object('queue', q)::text);
  END IF;
  RETURN next_id;
END $$;

-- Whether link `id` exists and is unfinished (the active link may have been deleted, or
-- never inserted: an insert that hit a unique conflict ran the BEFORE trigger anyway).
CREATE OR REPLACE FUNCTION {p}.kerrera_chain_running(id bigint) RETURNS boolean
LANGUAGE sql AS $$
  SELECT EXISTS (SELECT 1 FROM {p}.oban_jobs j WHERE j.id = $1
                 AND j.state NOT IN ('completed', 'cancelled', 'discarded', 'suspended'))
$$;

-- A waiting link leaves `suspended` only when its chain releases it (or for a final
-- state: cancelled, discarded, ...): an operator's retry of it must not start it out
-- of turn, next to the link that runs.
CREATE OR REPLACE FUNCTION {p}.kerrera_chain_wait() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  IF current_setting('kerrera.chain_release', true) IS DISTINCT FROM NEW.meta ->> 'chain_id'
  THEN
    NEW.state := 'suspended';
  END IF;
  RETURN NEW;
END $$;

-- When a link is fetched, its attempted_at is the moment it was claimed, not the start
-- of the fetch's transaction: on a loaded machine a statement's `now()` can precede the
-- snapshot that saw the link released (and so the previous link's completed_at), which
-- would make links that ran one after another look as if they overlapped.
CREATE OR REPLACE FUNCTION {p}.kerrera_chain_claimed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  NEW.attempted_at := timezone('UTC', clock_timestamp());
  RETURN NEW;
END $$;

-- Before a link is inserted: number it, and hold it back (suspended) while its chain
-- has a running link, a waiting one, or is held. The upsert locks the chain's row, so
-- concurrent inserters of one chain take turns, and their links keep that order.
CREATE OR REPLACE FUNCTION {p}.kerrera_chain_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  cid text := NEW.meta ->> 'chain_id';
  c {p}.kerrera_chains;
BEGIN
  INSERT INTO {p}.kerrera_chains AS k (chain_id, seq) VALUES (cid, 1)
  ON CONFLICT (chain_id) DO UPDATE SET seq = k.seq + 1
  RETURNING * INTO c;
  NEW.meta := NEW.meta || jsonb_build_object('chain_seq', c.seq);
  IF NEW.state IN ('completed', 'cancelled', 'discarded', 'suspended') THEN
    RETURN NEW;
  END IF;
  IF c.held_by IS NOT NULL
     OR (c.active_id IS NOT NULL AND {p}.kerrera_chain_running(c.active_id))
     OR EXISTS (SELECT 1 FROM {p}.oban_jobs
                WHERE state = 'suspended' AND meta ? 'chain_id' AND meta ->> 'chain_id' = cid)
  THEN
    NEW.state := 'suspended';
  ELSE
    UPDATE {p}.kerrera_chains SET active_id = NEW.id WHERE chain_id = cid;
  END IF;
  RETURN NEW;
END $$;

-- After a link changes state or is deleted: when the active link ends, release the
-- next one, unless it failed and its chain holds on failure; a finished link that is
-- retried becomes the active one again if none runs (and lifts the hold it caused).
CREATE OR REPLACE FUNCTION {p}.kerrera_chain_track() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  j {p}.oban_jobs := CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
  cid text := j.meta ->> 'chain_id';
  was_done boolean := OLD.state IN ('completed', 'cancelled', 'discarded');
  was_active boolean := NOT was_done AND OLD.state <> 'suspended';
  is_done boolean := TG_OP = 'DELETE' OR NEW.state IN ('completed', 'cancelled', 'discarded');
  c {p}.kerrera_chains;
BEGIN
  IF was_active AND is_done THEN
    SELECT * INTO c FROM {p}.kerrera_chains WHERE chain_id = cid FOR UPDATE;
    IF NOT FOUND OR c.active_id IS DISTINCT FROM j.id THEN
      RETURN NULL;  -- not the link the chain waits on (an operator re-ran an old one)
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.state IN ('cancelled', 'discarded')
       AND NEW.meta ->> 'chain_on_failure' = 'hold' THEN
      UPDATE {p}.kerrera_chains SET active_id = NULL, held_by = j.id WHERE chain_id = cid;
    ELSE
      UPDATE {p}.kerrera_chains SET active_id = {p}.kerrera_chain_release(cid)
      WHERE chain_id = cid;
    END IF;
  ELSIF was_done AND NOT is_done AND NEW.state <> 'suspended' THEN
    SELECT * INTO c FROM {p}.kerrera_chains WHERE chain_id = cid FOR UPDATE;
    IF FOUND AND (c.active_id IS NULL OR NOT {p}.kerrera_chain_running(c.active_id)) THEN
      UPDATE {p}.kerrera_chains
      SET active_id = j.id, held_by = CASE WHEN held_by = j.id THEN NULL ELSE held_by END
      WHERE chain_id = cid;
    END IF;
  END IF;
  RETURN NULL;
END $$;
"""

TRIGGERS = """
CREATE TRIGGER kerrera_batch_mark BEFORE UPDATE OF state ON {p}.oban_jobs
  FOR EACH ROW WHEN (NEW.meta ? 'batch_id' AND NOT NEW.meta ? 'batch_ran'
    AND NEW.state IN ('completed', 'cancelled', 'discarded', 'retryable', 'scheduled')
    AND (OLD.state = 'executing' OR NEW.state IN ('completed', 'cancelled', 'discarded')))
  EXECUTE FUNCTION {p}.kerrera_batch_mark();
CREATE TRIGGER kerrera_batch_update AFTER UPDATE OF state ON {p}.oban_jobs
  FOR EACH ROW WHEN (NEW.meta ? 'batch_id' AND OLD.state IS DISTINCT FROM NEW.state)
  EXECUTE FUNCTION {p}.kerrera_batch_track();
CREATE TRIGGER kerrera_batch_delete AFTER DELETE ON {p}.oban_jobs
  FOR EACH ROW WHEN (OLD.meta ? 'batch_id')
  EXECUTE FUNCTION {p}.kerrera_batch_track();
CREATE TRIGGER kerrera_chain_wait BEFORE UPDATE OF state ON {p}.oban_jobs
  FOR EACH ROW WHEN (OLD.state = 'suspended' AND NEW.meta ? 'chain_id'
    AND NEW.state IN ('available', 'scheduled', 'executing', 'retryable'))
  EXECUTE FUNCTION {p}.kerrera_chain_wait();
CREATE TRIGGER kerrera_chain_claimed BEFORE UPDATE OF state ON {p}.oban_jobs
  FOR EACH ROW WHEN (NEW.meta ? 'chain_id' AND OLD.state = 'available'
    AND NEW.state = 'executing')
  EXECUTE FUNCTION {p}.kerrera_chain_claimed();
CREATE TRIGGER kerrera_chain_insert BEFORE INSERT ON {p}.oban_jobs
  FOR EACH ROW WHEN (NEW.meta ? 'chain_id')
  EXECUTE FUNCTION {p}.kerrera_chain_insert();
CREATE TRIGGER kerrera_chain_update AFTER UPDATE OF state ON {p}.oban_jobs
  FOR EACH ROW WHEN (NEW.meta ? 'chain_id' AND OLD.state IS DISTINCT FROM NEW.state)
  EXECUTE FUNCTION {p}.kerrera_chain_track();
CREATE TRIGGER kerrera_chain_delete AFTER DELETE ON {p}.oban_jobs
  FOR EACH ROW WHEN (OLD.meta ? 'chain_id')
  EXECUTE FUNCTION {p}.kerrera_chain_track();
"""

DROP_TRIGGERS = """
DROP TRIGGER IF EXISTS kerrera_batch_mark ON {p}.oban_jobs;
DROP TRIGGER IF EXISTS kerrera_batch_update ON {p}.oban_jobs;
DROP TRIGGER IF EXISTS kerrera_batch_delete ON {p}.oban_jobs;
DROP TRIGGER IF EXISTS kerrera_chain_wait ON {p}.oban_jobs;
DROP TRIGGER IF EXISTS kerrera_chain_claimed ON {p}.oban_jobs;
DROP TRIGGER IF EXISTS kerrera_chain_insert ON {p}.oban_jobs;
DROP TRIGGER IF EXISTS kerrera_chain_update ON {p}.oban_jobs;
DROP TRIGGER IF EXISTS kerrera_chain_delete ON {p}.oban_jobs;
"""

DROP = (
    DROP_TRIGGERS
    + """
DROP FUNCTION IF EXISTS {p}.kerrera_batch_track();
DROP FUNCTION IF EXISTS {p}.kerrera_batch_fire({p}.kerrera_batches, text);
DROP FUNCTION IF EXISTS {p}.kerrera_batch_mark();
DROP FUNCTION IF EXISTS {p}.kerrera_chain_track();
DROP FUNCTION IF EXISTS {p}.kerrera_chain_insert();
DROP FUNCTION IF EXISTS {p}.kerrera_chain_wait();
DROP FUNCTION IF EXISTS {p}.kerrera_chain_claimed();
DROP FUNCTION IF EXISTS {p}.kerrera_chain_release(text);
DROP FUNCTION IF EXISTS {p}.kerrera_chain_running(bigint);
DROP TABLE IF EXISTS {p}.kerrera_batches;
DROP TABLE IF EXISTS {p}.kerrera_chains;
"""
)


def _sql(template: str, p: str) -> str:
    # The insert channel is named after the schema without its quotes, as the engine
    # names it (`<prefix>.oban_insert`); the prefix is a checked identifier.
    return template.format(p=p, channel=f"{p.strip(chr(34))}.oban_insert")


def up_7(cur: Any, p: str) -> str:
    """The index of suspended chain links (built concurrently: `oban_jobs` may be busy
    with an Elixir node), then the tables, functions and triggers in one transaction."""
    _build_concurrently(
        cur,
        p,
        CHAIN_INDEX,
        "INDEX CONCURRENTLY {name} ON {p}.oban_jobs "
        "((meta ->> 'chain_id'), ((meta ->> 'chain_seq')::bigint)) "
        "WHERE state = 'suspended' AND meta ? 'chain_id'",
    )
    with cur.connection.transaction():
        cur.execute(_sql(TABLES, p))
        cur.execute(_sql(BATCH_FUNCTIONS, p))
        cur.execute(_sql(CHAIN_FUNCTIONS, p))
        cur.execute(_sql(DROP_TRIGGERS, p))  # (left by a run that stopped half-way)
        cur.execute(_sql(TRIGGERS, p))
    return ""


def down_7(cur: Any, p: str, note: str) -> None:
    """Drop the triggers, functions and Kerrera's tables (never Oban's), then the index.
    Jobs left `suspended` by a chain stay so: nothing would release them any more."""
    with cur.connection.transaction():
        cur.execute(_sql(DROP, p))
    cur.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {p}.{CHAIN_INDEX}")
