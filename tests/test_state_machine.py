"""A state-machine test of job transitions against the real database.

Hypothesis drives random sequences of inserts, fetches, acks (fresh and stale), retries,
cancels and deletes through the engine's own statements; a small model says what each
should do, and after every step the table must agree with the model. This is where the
guards earn their keep: a stale ack must never move a job.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from support.scripted import Scripted

from kerrera.engine.statements import Statements, array_literal, insert_params, job_row
from kerrera.migrations import migrate_up

TERMINAL_STATES = ("completed", "discarded", "cancelled")
OUTCOMES = ("completed", "retryable", "discarded", "cancelled", "scheduled")


def _machine(dsn: str, prefix: str) -> type[RuleBasedStateMachine]:
    sql = Statements(prefix)

    class Jobs(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.conn = psycopg.connect(dsn, autocommit=True)
            self.conn.execute(f'TRUNCATE "{prefix}".oban_jobs')
            self.model: dict[int, dict[str, Any]] = {}
            self.seen_attempts: list[tuple[int, int]] = []  # every (id, attempt) fetched
            self.clock = 0  # orders scheduled_at: one tick per insert or retry statement

        def teardown(self) -> None:
            self.conn.close()

        def _rows(self, name: str, params: dict[str, Any]) -> list[Any]:
            with self.conn.cursor(row_factory=job_row) as cur:
                cur.execute(sql[name], params)
                return cur.fetchall()

        @rule(n=st.integers(1, 4), priority=st.integers(0, 3))
        def insert(self, n: int, priority: int) -> None:
            jobs = [Scripted.new({}, priority=priority) for _ in range(n)]
            self.clock += 1
            with self.conn.cursor() as cur:
                cur.execute(sql["insert_jobs"], insert_params(jobs, sql.insert_channel))
                for job_id, *_rest in cur.fetchall():
                    self.model[job_id] = {
                        "state": "available",
                        "attempt": 0,
                        "priority": priority,
                        "max": 3,
                        "due": self.clock,
                    }

        @rule(demand=st.integers(0, 4))
        def fetch(self, demand: int) -> None:
            got = self._rows(
                "fetch_jobs",
                {
                    "done_ids": "{}",
                    "done_attempts": "{}",
                    "acks": "[]",
                    "queue": "default",
                    "demand": demand,
                    "node": "n",
                    "producer": str(uuid.uuid4()),
                },
            )
            available = sorted(
                (m["priority"], m["due"], i)
                for i, m in self.model.items()
                if m["state"] == "available"
            )
            assert sorted(j.id for j in got) == sorted(i for *_, i in available[:demand])
            for job in got:
                self.model[job.id].update(state="executing", attempt=job.attempt)
                self.seen_attempts.append((job.id, job.attempt))

        @rule(pick=st.integers(0, 10**6), outcome=st.sampled_from(OUTCOMES), stale=st.booleans())
        def ack(self, pick: int, outcome: str, stale: bool) -> None:
            # Half the time, an ack from an attempt that is no longer the job's latest:
            # what a slow executor sends after its job was retried and fetched again.
            latest = {i: a for i, a in self.seen_attempts}
            pool = [(i, a) for i, a in self.seen_attempts if (a < latest[i]) == stale]
            if not pool:
                return
            job_id, attempt = pool[pick % len(pool)]
            if outcome == "completed":
                params = {
                    "done_ids": array_literal([job_id]),
                    "done_attempts": array_literal([attempt]),
                    "acks": "[]",
                }
            else:
                import json

                ack = {
                    "id": job_id,
                    "attempt": attempt,
                    "state": outcome,
                    "delay": 3600 if outcome in ("retryable", "scheduled") else None,
                    "snooze": outcome == "scheduled",
                    "error": {"at": "x", "attempt": attempt, "error": "e"},
                }
                params = {"done_ids": "{}", "done_attempts": "{}", "acks": json.dumps([ack])}
            params.update(queue="default", demand=0, node="n", producer="p")
            self._rows("fetch_jobs", params)
            model = self.model.get(job_id)
            if model and model["state"] == "executing" and model["attempt"] == attempt:
                model["state"] = outcome
                if outcome == "scheduled":
                    model["max"] += 1

        @rule(pick=st.integers(0, 10**6))
        def retry(self, pick: int) -> None:
            finished = sorted(
                i for i, m in self.model.items() if m["state"] not in ("available", "executing")
            )
            candidates = finished or sorted(self.model)
            if not candidates:
                return
            job_id = candidates[pick % len(candidates)]
            self._rows("retry_jobs", {"ids": [job_id], "channel": sql.insert_channel})
            model = self.model[job_id]
            if model["state"] != "executing":
                self.clock += 1
                model.update(state="available", due=self.clock)
                model["max"] = max(model["max"], model["attempt"] + 1)

        @rule(pick=st.integers(0, 10**6))
        def cancel(self, pick: int) -> None:
            if not self.model:
                return
            job_id = sorted(self.model)[pick % len(self.model)]
            self._rows("cancel_jobs", {"ids": [job_id], "signal": sql.signal_channel})
            if self.model[job_id]["state"] not in TERMINAL_STATES:
                self.model[job_id]["state"] = "cancelled"

        @rule(pick=st.integers(0, 10**6))
        def delete(self, pick: int) -> None:
            if not self.model:
                return
            job_id = sorted(self.model)[pick % len(self.model)]
            self._rows("delete_jobs", {"ids": [job_id]})
            if self.model[job_id]["state"] != "executing":
                del self.model[job_id]

        @invariant()
        def table_agrees_with_model(self) -> None:
            rows = self.conn.execute(
                f'SELECT id, state::text, attempt, max_attempts FROM "{prefix}".oban_jobs'
            ).fetchall()
            actual = {r[0]: (r[1], r[2], r[3]) for r in rows}
            expected = {i: (m["state"], m["attempt"], m["max"]) for i, m in self.model.items()}
            assert actual == expected

    return Jobs


def test_job_transitions_follow_the_model(dsn: str, prefix: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate_up(conn, prefix)
    machine = _machine(dsn, prefix)
    machine.TestCase.settings = settings(
        max_examples=25,
        stateful_step_count=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    pytest.importorskip("hypothesis")
    machine.TestCase().runTest()


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
    await engine.ack_jobs(AckBatch(other=[failed]))
    await app.retry_job(job.id)
    second = (await engine.fetch_jobs("default", 1, AckBatch(), "n", "p2"))[0]
    assert (second.id, second.attempt) == (job.id, 2)
    for stale in (
        AckBatch(done_ids=[job.id], done_attempts=[1]),
        AckBatch(other=[{**failed, "state": "discarded"}]),
    ):
        await engine.ack_jobs(stale)  # the first executor, late
        now = await app.get_job(job.id)
        assert (now.state.value, now.attempt) == ("executing", 2)
    await engine.ack_jobs(AckBatch(done_ids=[job.id], done_attempts=[2]))
    assert (await app.get_job(job.id)).state.value == "completed"
