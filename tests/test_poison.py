"""Outcomes the database would refuse never hold back the acks bundled with them."""

from __future__ import annotations

from typing import Any

import psycopg
from conftest import eventually
from support.scripted import Awkward, Scripted

from kerrera import Job
from kerrera.engine.base import AckBatch
from kerrera.queue import DaemonThreadPool, Executor, Producer


async def test_awkward_outcomes_are_recorded_and_the_queue_goes_on(make_app: Any, sql: Any) -> None:
    app = make_app(queues={"default": 5}, stage_interval=0.1)
    async with app:
        jobs = await app.insert_all(
            [
                Awkward.new({"what": w})
                for w in ("nul_error", "nul_record", "snooze_forever", "nan_backoff")
            ]
            + [Scripted.new({"n": i}) for i in range(20)]
        )
        await eventually(
            lambda: (
                sql(
                    "SELECT count(*) FROM oban_jobs WHERE state = "
                    "'completed' AND worker LIKE '%%Scripted'"
                )[0][0]
                == 20
            )
        )
        await eventually(
            lambda: (
                sql(
                    "SELECT count(*) FROM oban_jobs WHERE state IN "
                    "('retryable', 'discarded', 'scheduled')"
                )[0][0]
                == 4
            )
        )
    rows = {
        r[0]: r[1:]
        for r in sql(
            "SELECT args->>'what', state::text, errors, "
            "scheduled_at > now() + interval '1 year' "
            "FROM oban_jobs WHERE args ? 'what'"
        )
    }
    assert "RuntimeError: bad \\x00 byte" in rows["nul_error"][1][0]["error"]
    assert "NUL character" in rows["nul_record"][1][0]["error"]
    assert rows["snooze_forever"][0] == "scheduled" and rows["snooze_forever"][2]
    assert rows["nan_backoff"][0] == "retryable" and not rows["nan_backoff"][2]
    assert len(jobs) == 24


class _RefusingEngine:
    """Refuses (as PostgreSQL would, with a data error) any batch holding job 2's ack."""

    def __init__(self) -> None:
        self.written: list[dict[str, Any]] = []
        self.done: list[int] = []

    async def fetch_jobs(
        self, queue: str, demand: int, acks: AckBatch, node: str, producer: str
    ) -> list[Job]:
        await self.ack_jobs(acks)
        return []

    async def ack_jobs(self, acks: AckBatch) -> None:
        if any(a["id"] == 2 and "meta" in a for a in acks.outcomes):
            raise psycopg.errors.DataError("unsupported Unicode escape sequence")
        self.written.extend(acks.outcomes)
        self.done.extend(acks.done_ids)

    async def reclaim_jobs(self, queue: str, producer: str, running: Any) -> int:
        return 0


async def test_a_refused_ack_is_replaced_and_the_others_are_written() -> None:
    engine = _RefusingEngine()
    producer = Producer(
        "q",
        5,
        engine=engine,
        executor=Executor(DaemonThreadPool(1)),  # type: ignore[arg-type]
        node="n",
        poll_interval=0.05,
    )
    outcomes: list[dict[str, Any] | None] = [
        None,  # a plain completion
        {"id": 2, "attempt": 1, "state": "completed", "meta": {"return": "x"}},
        {"id": 3, "attempt": 1, "state": "cancelled", "error": {"error": "r"}},
    ]
    for job_id, outcome in enumerate(outcomes, 1):
        producer.ledger.end(producer.ledger.start(job_id, 1), outcome)
    producer.start()
    await eventually(lambda: {a["id"] for a in engine.written} == {2, 3})
    await producer.stop(1)
    assert engine.done == [1]
    replaced = next(a for a in engine.written if a["id"] == 2)
    assert replaced["state"] == "completed" and "meta" not in replaced
    assert "could not be recorded" in replaced["error"]["error"]
