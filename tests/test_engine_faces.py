"""The async and the sync engine drive the same engine logic: same statements, in the
same order, for the same batch; and a caller's transaction decides for both."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.errors import UniqueViolation
from support.scripted import Scripted

from kerrera import JobState, Unique
from kerrera.engine.jobs import retry_jobs
from kerrera.engine.steps import HandOver, Query, Route

# Every insert statement on the jobs table, as PostgreSQL ran it: by COPY or not, how
# many rows, and whether they were unique jobs.
_WATCH_INSERTS = """
CREATE TABLE "{p}".inserts_seen (n serial, copied bool, rows int, uniq bool);
CREATE FUNCTION "{p}".note_inserts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO "{p}".inserts_seen (copied, rows, uniq)
  SELECT current_query() ILIKE '%FROM STDIN%', count(*), bool_or(meta ? 'uniq_key') FROM new_rows;
  RETURN NULL;
END $$;
CREATE TRIGGER note_inserts AFTER INSERT ON "{p}".oban_jobs
REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION "{p}".note_inserts();
"""


def _mixed_batch(tag: str) -> list[Any]:
    """A unique job, enough jobs due now for COPY, and a scheduled job."""
    return [
        Scripted.new({"tag": tag}, unique=Unique()),
        *[Scripted.new({"tag": tag, "i": i}) for i in range(250)],
        Scripted.new({"tag": tag, "later": True}, schedule_in=3600),
    ]


def _seen(sql: Any) -> list[tuple[bool, int, bool]]:
    rows = sql("SELECT copied, rows, uniq FROM inserts_seen ORDER BY n")
    sql("TRUNCATE inserts_seen")
    return [(bool(c), int(n), bool(u)) for c, n, u in rows]


async def test_both_engines_insert_a_mixed_batch_by_the_same_statements(
    make_app: Any, prefix: str, sql: Any
) -> None:
    app = make_app()
    await app.migrate()
    sql(_WATCH_INSERTS.format(p=prefix))
    # Unique jobs first, then the jobs due now by COPY, then the scheduled one.
    expected = [(False, 1, True), (True, 250, False), (False, 1, False)]

    saved = await app.insert_all(_mixed_batch("async"))
    assert _seen(sql) == expected
    synced = app.sync.insert_all(_mixed_batch("sync"))
    assert _seen(sql) == expected
    app.sync.close()

    for jobs in (saved, synced):  # each face returns the jobs in the caller's order
        assert [j.args for j in jobs] == [j.args for j in _mixed_batch(jobs[0].args["tag"])]
        assert [j.state for j in jobs[:-1]] == [JobState.AVAILABLE] * 251
        assert jobs[-1].state is JobState.SCHEDULED


def test_a_sync_inline_insert_rolls_back_with_the_callers_transaction(
    make_app: Any, dsn: str, sql: Any
) -> None:
    app = make_app(testing="inline")
    app.sync.migrate()
    with psycopg.connect(dsn) as conn:  # not autocommit, no transaction begun yet
        job = app.sync.insert(Scripted.new({}), conn=conn)
        assert job.state is JobState.COMPLETED  # ran at once, inside that transaction
        conn.rollback()
    app.sync.close()
    # Neither the row nor its run survive: no job is left behind as executing.
    assert sql("SELECT count(*) FROM oban_jobs")[0][0] == 0


def test_a_retry_that_meets_a_unique_race_runs_again_only_where_it_may() -> None:
    route = Route("q.oban_insert", in_statement=False)
    steps = retry_jobs([7], route, repeatable=True)
    first = next(steps)
    assert isinstance(first, Query) and first.name == "retry_jobs"
    assert steps.throw(UniqueViolation()) == first  # the same statement, once more
    handed = steps.send([])
    assert handed == HandOver("q.oban_insert", [])

    inside_a_callers_transaction = retry_jobs([7], route, repeatable=False)
    next(inside_a_callers_transaction)
    with pytest.raises(UniqueViolation):
        inside_a_callers_transaction.throw(UniqueViolation())
