"""A state-machine test of job transitions against the real database.

Hypothesis drives random sequences of the engine's operations: inserts (plain, scheduled,
and unique with conflicts and expired periods), fetches by several producers, acks and
snoozes (fresh, stale, late, or from a producer that does not own the job), staging,
releases at shutdown, reclaims after a lost fetch reply, nodes that die and the lifeline
that rescues their jobs, time passing, retries, cancels and deletes. A small model says
what each should do, and after every step the table must agree with it. This is where
the guards earn their keep: a stale ack must never move a job, no attempt number runs
twice, and a unique key never has two holders.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from support.scripted import Scripted

from kerrera.core.unique import ALL_STATES, DEFAULT_STATES, INCOMPLETE, Unique
from kerrera.engine.base import AckBatch
from kerrera.engine.migrations import migrate_up
from kerrera.engine.postgres import PostgresEngine

T = TypeVar("T")
Run = Callable[[Awaitable[T]], T]

HOUR = 3600
#: Producers that fetch: p0 and p1 heartbeat (Kerrera nodes); p2 never does (an Elixir
#: node, or a producer whose row was lost), so only the age of its jobs can orphan them.
PRODUCERS = ("p0", "p1", "p2")
HEARTBEATING = ("p0", "p1")
OUTCOMES = ("completed", "retryable", "discarded", "cancelled", "snoozed")
#: Which attempt an ack or a release names, for a running job: its latest, from its
#: owner; an earlier one, from the same owner (a slow executor after a retry); its latest
#: from a producer that does not own it. Or the latest attempt of a job that no longer
#: runs (a late executor after a rescue, a cancel or a delete). Half of them are fresh:
#: those are the ones that move jobs.
FLAVOURS = ("fresh", "stale", "stranger", "late")
flavours = st.sampled_from(FLAVOURS) | st.just("fresh")
UNIQUE_STATES = (INCOMPLETE, DEFAULT_STATES, ALL_STATES)
TERMINAL = ("completed", "discarded", "cancelled")
picks = st.integers(0, 10**6)


@dataclass
class Row:
    """What the model expects of one job's row."""

    state: str
    priority: int
    max: int
    attempt: int = 0
    owner: str | None = None  # attempted_by[2] of the latest fetch
    meta: dict[str, Any] = field(default_factory=dict)
    errors: int = 0
    due: bool = False  # scheduled or retryable, and its time has come
    old_insert: bool = False  # inserted_at moved two hours back
    old_attempt: bool = False  # attempted_at moved two hours back (since the last fetch)

    def holds(self, key: str | None) -> bool:
        """Whether this job holds unique `key`: it carries it, in a state that counts."""
        if key is None or self.meta.get("uniq_key") != key:
            return False
        return self.state in self.meta["uniq_states"]

    def put_back(self) -> None:
        """Released or reclaimed: available again, the attempt given back."""
        self.state = "available"
        self.max += 1


def _retired(meta: dict[str, Any]) -> dict[str, Any]:
    """The meta of a job that gave its unique key up (renamed `uniq_retired`)."""
    kept = {k: v for k, v in meta.items() if k not in ("uniq_key", "uniq_states")}
    return {**kept, "uniq_retired": meta["uniq_key"]}


def _machine(
    engine: PostgresEngine, run: Run[Any], conn: psycopg.Connection[Any]
) -> type[RuleBasedStateMachine]:
    """The machine, on an open engine (`run` runs one of its coroutines to the end) and a
    plain connection for the test's own reads and for moving time."""
    table = engine.sql.table
    producers = f'"{engine.sql.prefix}".kerrera_producers'

    class Jobs(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            conn.execute(f"TRUNCATE {table}, {producers}")
            self.model: dict[int, Row] = {}
            self.seen: list[tuple[int, int, str]] = []  # every (id, attempt, owner) fetched
            self.producers = dict.fromkeys(PRODUCERS, "none")  # or "alive" (heartbeating)

        # -- helpers ----------------------------------------------------------------------
        def _times(self, ids: list[int]) -> dict[int, datetime]:
            """When each job is (or was) due, by the table's clock."""
            rows = conn.execute(
                f"SELECT id, scheduled_at FROM {table} WHERE id = ANY(%s)", (ids,)
            ).fetchall()
            return dict(rows)

        def _attempt(self, pick: int, flavour: str) -> tuple[int, int, str] | None:
            """A fetched (id, attempt, owner) to ack or release, of the given flavour."""
            latest = {i: (a, o) for i, a, o in self.seen}
            if flavour == "stale":  # (the owner matches: only the attempt is wrong)
                pool = [
                    (i, a, latest[i][1]) for i, a, _ in self.seen
                    if a < latest[i][0] and self._running(i) is not None
                ]  # fmt: skip
            else:
                pool = [
                    (i, a, o) for i, (a, o) in sorted(latest.items())
                    if (self._running(i) is not None) == (flavour != "late")
                ]  # fmt: skip
            if not pool:
                return None
            job_id, attempt, owner = pool[pick % len(pool)]
            if flavour == "stranger":
                owner = PRODUCERS[(PRODUCERS.index(owner) + 1) % len(PRODUCERS)]
            return job_id, attempt, owner

        def _running(self, job_id: int) -> Row | None:
            row = self.model.get(job_id)
            return row if row is not None and row.state == "executing" else None

        def _some(self, *states: str) -> bool:
            return any(r.state in states for r in self.model.values())

        def _owned(self, job_id: int, attempt: int, owner: str) -> Row | None:
            """The model's row if this attempt of this owner still runs the job (what
            every guarded ack checks), else None."""
            row = self._running(job_id)
            return row if row is not None and (row.attempt, row.owner) == (attempt, owner) else None

        def _pick(self, pick: int) -> int:
            return sorted(self.model)[pick % len(self.model)]

        # -- inserts ----------------------------------------------------------------------
        @initialize(
            jobs=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 3)), min_size=1, max_size=6)
        )
        def some_jobs(self, jobs: list[tuple[int, int]]) -> None:
            """Start with a few jobs waiting, so that the first steps have work to do."""
            saved = run(engine.insert_jobs(
                [Scripted.new({}, priority=p, max_attempts=m) for p, m in jobs]
            ))  # fmt: skip
            for job in saved:
                assert job.id is not None and job.state.value == "available"
                self.model[job.id] = Row("available", job.priority, job.max_attempts)

        @rule(n=st.integers(1, 4), priority=st.integers(0, 3), attempts=st.integers(1, 3),
              later=st.booleans())  # fmt: skip
        def insert(self, n: int, priority: int, attempts: int, later: bool) -> None:
            delay = HOUR if later else None
            jobs = [
                Scripted.new({}, priority=priority, max_attempts=attempts, schedule_in=delay)
                for _ in range(n)
            ]
            saved = run(engine.insert_jobs(jobs))
            state = "scheduled" if later else "available"
            assert [j.state.value for j in saved] == [state] * n
            for job in saved:
                assert job.id is not None and job.id not in self.model
                self.model[job.id] = Row(state, priority, job.max_attempts)

        @rule(
            values=st.lists(st.integers(0, 2), min_size=1, max_size=3),
            states=st.sampled_from(UNIQUE_STATES),
            period=st.sampled_from([None, HOUR]),
        )
        def insert_unique(
            self, values: list[int], states: tuple[str, ...], period: float | None
        ) -> None:
            spec = Unique(period=period, states=states)
            jobs = [Scripted.new({"u": v}, unique=spec) for v in values]
            keys = [spec.key(j) for j in jobs]
            if period is not None:  # a holder older than the period gives its key up
                for row in self.model.values():
                    key = row.meta.get("uniq_key")
                    if row.old_insert and key in keys and row.holds(key):
                        row.meta = _retired(row.meta)
            holders = {k: i for k in keys for i, r in self.model.items() if r.holds(k)}
            saved = run(engine.insert_jobs(jobs))
            first: dict[str, int] = {}
            for key, job in zip(keys, saved, strict=True):
                assert job.id is not None
                if key in holders:  # a conflict: the holder comes back
                    assert (job.id, job.conflict) == (holders[key], True)
                elif key in first:  # a duplicate within the batch: the first one
                    assert (job.id, job.conflict) == (first[key], True)
                else:
                    assert job.id not in self.model and not job.conflict
                    first[key] = job.id
                    meta = {"uniq_key": key, "uniq_states": list(spec.states)}
                    self.model[job.id] = Row("available", job.priority, job.max_attempts,
                                             meta=meta)  # fmt: skip

        # -- fetch, ack, snooze -------------------------------------------------------------
        @precondition(lambda self: self._some("available"))
        @rule(demand=st.integers(0, 4), producer=st.sampled_from(PRODUCERS))
        def fetch(self, demand: int, producer: str) -> None:
            available = [i for i, r in self.model.items() if r.state == "available"]
            when = self._times(available)
            order = sorted(available, key=lambda i: (self.model[i].priority, when[i], i))
            if producer in HEARTBEATING:  # a node's producers heartbeat while they work
                self.heartbeat(producer)
            nothing = AckBatch(producer=producer)  # a plain fetch, with no acks to carry
            got = run(engine.fetch_jobs("default", demand, nothing, "n", producer))
            assert sorted(j.id for j in got) == sorted(order[:demand])
            for job in got:
                assert job.id is not None
                row = self.model[job.id]
                assert job.attempt == row.attempt + 1, "an attempt number was used twice"
                row.state, row.attempt, row.owner = "executing", job.attempt, producer
                row.max = max(row.max, job.attempt)
                row.old_attempt = False
                self.seen.append((job.id, job.attempt, producer))

        @precondition(lambda self: self.seen)
        @rule(pick=picks, outcome=st.sampled_from(OUTCOMES),
              flavour=flavours, delay=st.sampled_from([0, HOUR]))  # fmt: skip
        def ack(self, pick: int, outcome: str, flavour: str, delay: int) -> None:
            chosen = self._attempt(pick, flavour)
            if chosen is None:
                return
            job_id, attempt, owner = chosen
            if outcome == "completed":
                acks = AckBatch(producer=owner, done_ids=[job_id], done_attempts=[attempt])
            else:
                acks = AckBatch(producer=owner, outcomes=[self._outcome(chosen, outcome, delay)])
            run(engine.ack_jobs(acks))
            row = self._owned(job_id, attempt, owner)
            if row is None:  # the guards turned it away
                return
            row.due = delay == 0
            if outcome == "snoozed":  # scheduled again, and the attempt is given back
                row.state = "scheduled"
                row.max += 1
                row.meta["snoozed"] = row.meta.get("snoozed", 0) + 1
            else:
                row.state = outcome
                row.errors += outcome != "completed"

        def _outcome(self, chosen: tuple[int, int, str], outcome: str, delay: int) -> Any:
            """An executor's ack of a run that did not simply complete."""
            job_id, attempt, _ = chosen
            ack: dict[str, Any] = {"id": job_id, "attempt": attempt}
            if outcome == "snoozed":
                row = self.model.get(job_id)
                count = (row.meta.get("snoozed", 0) if row else 0) + 1
                return {**ack, "state": "scheduled", "delay": delay, "snooze": True,
                        "meta": {"snoozed": count}}  # fmt: skip
            ack.update(state=outcome, error={"at": "x", "attempt": attempt, "error": "e"})
            return {**ack, "delay": delay} if outcome == "retryable" else ack

        # -- shutdown and lost fetch replies --------------------------------------------------
        @precondition(lambda self: self.seen)
        @rule(pick=picks, flavour=flavours)
        def release(self, pick: int, flavour: str) -> None:
            chosen = self._attempt(pick, flavour)
            if chosen is None:
                return
            job_id, attempt, owner = chosen
            acks = AckBatch(producer=owner, released_ids=[job_id], released_attempts=[attempt])
            run(engine.ack_jobs(acks))
            row = self._owned(job_id, attempt, owner)
            if row is not None:
                row.put_back()
                row.meta["released"] = row.meta.get("released", 0) + 1  # shown by the CLI

        @precondition(lambda self: self._some("executing"))
        @rule(producer=st.sampled_from(PRODUCERS), keep=st.integers(0, 255))
        def reclaim(self, producer: str, keep: int) -> None:
            # The producer knows it runs some of its jobs (those `keep` picks); any other
            # job it holds came from a fetch whose reply it never read.
            mine = sorted(
                i for i, r in self.model.items() if (r.state, r.owner) == ("executing", producer)
            )
            running = [i for n, i in enumerate(mine) if keep >> n & 1]
            lost = [i for i in mine if i not in running]
            assert run(engine.reclaim_jobs("default", producer, running)) == len(lost)
            for job_id in lost:
                self.model[job_id].put_back()

        # -- time, heartbeats and the services ----------------------------------------------
        def _ageing(self) -> list[int]:
            """Jobs whose age matters: running (orphans), waiting for their time, or
            holding a unique key (its period)."""
            return sorted(
                i for i, r in self.model.items()
                if r.state in ("executing", "scheduled", "retryable") or "uniq_key" in r.meta
            )  # fmt: skip

        @precondition(lambda self: self._ageing())
        @rule(pick=picks)
        def age(self, pick: int) -> None:
            """Two hours pass for one job: inserted, scheduled and attempted earlier."""
            ageing = self._ageing()
            job_id = ageing[pick % len(ageing)]
            conn.execute(
                f"UPDATE {table} SET inserted_at = inserted_at - interval '2 hours', "
                "scheduled_at = scheduled_at - interval '2 hours', "
                "attempted_at = attempted_at - interval '2 hours' WHERE id = %s",
                (job_id,),
            )
            row = self.model[job_id]
            row.old_insert = row.old_attempt = True
            row.due = True  # nothing here is scheduled more than an hour ahead

        @precondition(lambda self: self._some("scheduled", "retryable"))
        @rule(limit=st.integers(1, 4))
        def stage(self, limit: int) -> None:
            due = [
                i for i, r in self.model.items()
                if r.state in ("scheduled", "retryable") and r.due
            ]  # fmt: skip
            when = self._times(due)
            staged = sorted(due, key=lambda i: (when[i], i))[:limit]  # by time, then id
            assert run(engine.stage_jobs(limit)) == ({"default": len(staged)} if staged else {})
            for job_id in staged:
                self.model[job_id].state = "available"

        def heartbeat(self, producer: str) -> None:
            run(engine.heartbeat([(producer, "n", "default", "{}")]))
            self.producers[producer] = "alive"

        @precondition(lambda self: self._some("executing"))
        @rule(pick=picks, dies=st.booleans())
        def lifeline(self, pick: int, dies: bool) -> None:
            """Maybe a node that runs jobs dies (its producer's row stops being renewed
            and grows old), then the lifeline rescues the orphans."""
            expired = set()
            running = sorted(
                {r.owner for r in self.model.values() if r.state == "executing" and r.owner}
            )
            alive = [p for p in running if self.producers[p] == "alive"]
            if dies and alive:
                dead = alive[pick % len(alive)]
                conn.execute(
                    f"UPDATE {producers} SET updated_at = updated_at - interval '1 hour' "
                    "WHERE uuid = %s",
                    (dead,),
                )
                expired.add(dead)
            unknown = {p for p, s in self.producers.items() if s == "none"}
            orphans = [
                r for r in self.model.values()
                if r.state == "executing"
                and (r.owner in expired or (r.owner in unknown and r.old_attempt))
            ]  # fmt: skip
            assert run(engine.rescue_jobs(60, HOUR)) == (len(orphans), len(expired))
            for row in orphans:
                row.state = "discarded" if row.attempt >= row.max else "available"
                row.meta["rescued"] = row.meta.get("rescued", 0) + 1
            for producer in expired:
                self.producers[producer] = "none"

        # -- by hand --------------------------------------------------------------------------
        def _displaced(self, job_id: int) -> bool:
            """Whether another job holds the unique key this one carries."""
            key = self.model[job_id].meta.get("uniq_key")
            return any(r.holds(key) for i, r in self.model.items() if i != job_id)

        @precondition(lambda self: self.model)
        @rule(pick=picks, displaced=st.booleans())
        def retry(self, pick: int, displaced: bool) -> None:
            finished = sorted(
                i for i, r in self.model.items() if r.state not in ("available", "executing")
            )
            if displaced:  # the interesting case: its key has a new holder meanwhile
                finished = [i for i in finished if self._displaced(i)] or finished
            candidates = finished or sorted(self.model)
            job_id = candidates[pick % len(candidates)]
            retried = run(engine.retry_jobs([job_id]))
            row = self.model[job_id]
            assert [j.id for j in retried] == ([] if row.state == "executing" else [job_id])
            if row.state == "executing":
                return
            if self._displaced(job_id):  # it gives the key up: the retry never collides
                row.meta = _retired(row.meta)
            row.state = "available"
            row.max = max(row.max, row.attempt + 1)

        @precondition(lambda self: self.model)
        @rule(pick=picks, delete=st.booleans())
        def cancel_or_delete(self, pick: int, delete: bool) -> None:
            job_id = self._pick(pick)
            row = self.model[job_id]
            if delete:  # a running job is left alone
                deleted = run(engine.delete_jobs([job_id]))
                assert [j.id for j in deleted] == ([] if row.state == "executing" else [job_id])
                if row.state != "executing":
                    del self.model[job_id]
                return
            cancelled = run(engine.cancel_jobs([job_id]))
            assert [j.id for j in cancelled] == ([] if row.state in TERMINAL else [job_id])
            if row.state not in TERMINAL:
                row.state = "cancelled"

        # -- after every step -----------------------------------------------------------------
        @invariant()
        def table_agrees_with_model(self) -> None:
            rows = conn.execute(
                "SELECT id, state::text, attempt, max_attempts, CASE WHEN state = "
                "'executing' THEN attempted_by[2] END, meta, cardinality(errors) "
                f"FROM {table}"
            ).fetchall()
            expected = {
                i: (r.state, r.attempt, r.max, r.owner if r.state == "executing" else None,
                    r.meta, r.errors)
                for i, r in self.model.items()
            }  # fmt: skip
            assert {r[0]: r[1:] for r in rows} == expected

        @invariant()
        def every_run_has_its_own_attempt(self) -> None:
            # attempt counts runs: each fetch took the job's next number, none twice, and
            # no release, reclaim, snooze or rescue gave a number back.
            runs: dict[int, list[int]] = {}
            for job_id, attempt, _ in self.seen:
                runs.setdefault(job_id, []).append(attempt)
            for job_id, row in self.model.items():
                assert runs.get(job_id, []) == list(range(1, row.attempt + 1))
                assert row.attempt <= row.max

        @invariant()
        def a_unique_key_has_one_holder_at_most(self) -> None:
            # (The table agrees with the model, so these are the table's holders too.)
            held = [
                r.meta["uniq_key"] for r in self.model.values() if r.holds(r.meta.get("uniq_key"))
            ]
            assert len(held) == len(set(held)), held

        @invariant()
        def producers_agree_with_model(self) -> None:
            # Every row is a live producer's (the lifeline removed the dead ones).
            rows = conn.execute(
                "SELECT uuid, updated_at > timezone('UTC', now()) - interval '60 seconds' "
                f"FROM {producers}"
            ).fetchall()
            alive = {p for p, s in self.producers.items() if s == "alive"}
            assert dict(rows) == dict.fromkeys(alive, True)

    return Jobs


def test_job_transitions_follow_the_model(dsn: str, prefix: str) -> None:
    loop = asyncio.new_event_loop()
    engine = PostgresEngine(dsn, prefix, pool_size=2)
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate_up(conn, prefix)
        try:
            loop.run_until_complete(engine.open())
            machine = _machine(engine, loop.run_until_complete, conn)
            machine.TestCase.settings = settings(
                max_examples=80,
                stateful_step_count=50,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            )
            machine.TestCase().runTest()
        finally:
            loop.run_until_complete(engine.close())
            loop.close()


async def test_a_stale_ack_never_moves_a_job_that_was_fetched_again(make_app: Any) -> None:
    from kerrera.engine.base import AckBatch

    app = make_app()
    job = await app.insert(Scripted.new({}))
    engine = app.engine
    first = (await engine.fetch_jobs("default", 1, AckBatch(), "n", "p1"))[0]
    failed = {
        "id": first.id,
        "attempt": first.attempt,
        "state": "retryable",
        "delay": 0,
        "error": {"at": "x", "attempt": 1, "error": "e"},
    }
    await engine.ack_jobs(AckBatch(outcomes=[failed], producer="p1"))
    await app.retry_job(job.id)
    second = (await engine.fetch_jobs("default", 1, AckBatch(), "n", "p2"))[0]
    assert (second.id, second.attempt) == (job.id, 2)
    for stale in (
        AckBatch(done_ids=[job.id], done_attempts=[1], producer="p1"),
        AckBatch(outcomes=[{**failed, "state": "discarded"}], producer="p1"),
    ):
        await engine.ack_jobs(stale)  # the first executor, late
        now = await app.get_job(job.id)
        assert (now.state.value, now.attempt) == ("executing", 2)
    # The right attempt from the wrong owner (an attempt rolled back, fetched elsewhere)
    await engine.ack_jobs(AckBatch(done_ids=[job.id], done_attempts=[2], producer="p1"))
    assert (await app.get_job(job.id)).state.value == "executing"
    await engine.ack_jobs(AckBatch(done_ids=[job.id], done_attempts=[2], producer="p2"))
    assert (await app.get_job(job.id)).state.value == "completed"


@pytest.mark.parametrize(
    ("producer", "attempt"),
    [
        # The same producer ran the job twice (a retry between): only the attempt tells
        # the two runs apart, so that guard alone must turn the first run's acks away.
        ("p1", 1),
        # The right attempt number from a producer that does not hold the job (its own
        # run was rolled back, and the job fetched again elsewhere): the owner guard.
        ("p2", 2),
    ],
)
async def test_an_ack_of_a_run_that_no_longer_holds_the_job_moves_nothing(
    make_app: Any, producer: str, attempt: int
) -> None:
    app = make_app()
    job = await app.insert(Scripted.new({}))
    engine = app.engine
    await engine.fetch_jobs("default", 1, AckBatch(producer="p1"), "n", "p1")
    await engine.ack_jobs(AckBatch(producer="p1", done_ids=[job.id], done_attempts=[1]))
    await app.retry_job(job.id)
    again = (await engine.fetch_jobs("default", 1, AckBatch(producer="p1"), "n", "p1"))[0]
    assert (again.id, again.attempt) == (job.id, 2)
    late = {"id": job.id, "attempt": attempt, "error": {"at": "x", "attempt": 1, "error": "e"}}
    for stale in (
        AckBatch(producer=producer, done_ids=[job.id], done_attempts=[attempt]),
        *(AckBatch(producer=producer, outcomes=[{**late, "state": s}])
          for s in ("retryable", "discarded", "cancelled")),
        AckBatch(producer=producer, released_ids=[job.id], released_attempts=[attempt]),
    ):  # fmt: skip
        await engine.ack_jobs(stale)
        now = await app.get_job(job.id)
        assert (now.state.value, now.attempt, now.max_attempts) == ("executing", 2, 3), stale
