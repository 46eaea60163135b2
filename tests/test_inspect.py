"""The operator API on the app: list_jobs, count_jobs and the bulk actions by filter,
against the real database; and the throughput arithmetic of `kerrera top`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import pytest

from kerrera import ConfigError, Job, Kerrera, worker
from kerrera.app.inspect import act_on_matching
from kerrera.cli.top import Throughput
from kerrera.engine.inspect import JobFilter

Sql = Callable[..., list[tuple[Any, ...]]]


@worker(queue="mail")
async def mailer(job: Job) -> None:
    """Never run here: only its name matters."""


@worker(queue="media")
async def thumbs(job: Job) -> None:
    """Never run here: only its name matters."""


def mark(sql: Sql, ids: Sequence[int | None], state: str) -> None:
    """Put jobs in `state` directly, with the timestamp that state carries."""
    stamp = {"completed": "completed_at", "discarded": "discarded_at", "cancelled": "cancelled_at"}
    column = stamp.get(state, "attempted_at")
    sql(
        f"UPDATE oban_jobs SET state = %s::oban_job_state, attempt = 1, "
        f"attempted_at = timezone('UTC', now()), {column} = timezone('UTC', now()) "
        "WHERE id = ANY(%s)",
        (state, list(ids)),
    )


async def _fill(app: Kerrera, sql: Sql) -> dict[str, list[int]]:
    """mail: 2 available, 2 discarded, 1 completed; media: 3 available, 1 scheduled."""
    mail = await app.insert_all([mailer.new({"n": i}) for i in range(5)])
    media = await app.insert_all([thumbs.new({"n": i}) for i in range(3)])
    later = await app.insert(thumbs.new({"n": 9}, schedule_in=3600))
    mark(sql, [j.id for j in mail[2:4]], "discarded")
    mark(sql, [mail[4].id], "completed")
    ids = lambda jobs: [j.id for j in jobs if j.id is not None]  # noqa: E731
    return {
        "mail_available": ids(mail[:2]), "discarded": ids(mail[2:4]), "completed": ids(mail[4:]),
        "media_available": ids(media), "scheduled": ids([later]),
    }  # fmt: skip


async def test_list_jobs_filters_newest_first(make_app: Any, sql: Sql) -> None:
    app = make_app()
    ids = await _fill(app, sql)
    listed = await app.list_jobs()
    assert [j.id for j in listed] == sorted((i for v in ids.values() for i in v), reverse=True)
    assert [j.id for j in await app.list_jobs(state="discarded")] == ids["discarded"][::-1]
    both = await app.list_jobs(state=["discarded", "scheduled"])
    assert {j.id for j in both} == {*ids["discarded"], *ids["scheduled"]}
    media = await app.list_jobs(queue="media", state="available")
    assert [j.id for j in media] == ids["media_available"][::-1]
    assert {j.worker for j in await app.list_jobs(worker=mailer.name)} == {mailer.name}
    first = await app.list_jobs(limit=3)
    rest = await app.list_jobs(before_id=first[-1].id, limit=100)
    assert [j.id for j in first + rest] == [j.id for j in listed]


@pytest.mark.parametrize(
    ("options", "text"),
    [
        ({"state": "discardd"}, "did you mean 'discarded'"),
        ({"state": []}, "option 'state'"),
        ({"queue": ""}, "option 'queue'"),
        ({"limit": 0}, "option 'limit'"),
        ({"limit": 10_001}, "option 'limit'"),
        ({"limit": True}, "option 'limit'"),
        ({"before_id": "7"}, "option 'before_id'"),
    ],
)
async def test_list_jobs_rejects_bad_options(make_app: Any, options: Any, text: str) -> None:
    with pytest.raises(ConfigError, match=text) as caught:
        await make_app().list_jobs(**options)
    if options.get("state"):
        assert "valid states: available, suspended, scheduled" in str(caught.value)


async def test_count_jobs_counts_unfinished_states_per_queue(make_app: Any, sql: Sql) -> None:
    app = make_app()
    await _fill(app, sql)
    assert await app.count_jobs() == {
        "mail": {"available": 2, "scheduled": 0, "retryable": 0, "executing": 0, "suspended": 0},
        "media": {"available": 3, "scheduled": 1, "retryable": 0, "executing": 0, "suspended": 0},
    }


async def test_sync_face_lists_and_counts_the_same(make_app: Any, sql: Sql) -> None:
    app = make_app()
    await _fill(app, sql)
    listed = await app.list_jobs(state=["discarded", "scheduled"], limit=100)
    synced = await asyncio.to_thread(
        app.sync.list_jobs, state=["discarded", "scheduled"], limit=100
    )
    assert [j.id for j in synced] == [j.id for j in listed]
    assert await asyncio.to_thread(app.sync.count_jobs) == await app.count_jobs()
    with pytest.raises(ConfigError, match="option 'limit'"):
        app.sync.list_jobs(limit=0)
    app.sync.close()


async def test_bulk_actions_touch_only_matching_jobs(make_app: Any, sql: Sql) -> None:
    app = make_app()
    ids = await _fill(app, sql)
    seen: list[tuple[int, int]] = []
    retried = await app.retry_jobs_where(
        state="discarded", worker=mailer.name, on_progress=lambda d, t: seen.append((d, t))
    )
    assert retried == 2 and seen == [(0, 2), (2, 2)]
    states = dict(sql("SELECT id, state::text FROM oban_jobs"))
    assert {states[i] for i in ids["discarded"]} == {"available"}
    assert await app.cancel_jobs_where(queue="media") == 4
    assert await app.delete_jobs_where(state="cancelled", queue="media") == 4
    left = {row[0] for row in sql("SELECT id FROM oban_jobs")}
    assert left == {*ids["mail_available"], *ids["discarded"], *ids["completed"]}
    with pytest.raises(ConfigError, match="needs a filter"):
        await app.delete_jobs_where()
    assert await app.delete_jobs_where(all_jobs=True) == 5


async def test_bulk_actions_work_in_chunks_and_skip_jobs_inserted_meanwhile(
    make_app: Any, sql: Sql
) -> None:
    app = make_app()
    jobs = await app.insert_all([mailer.new({"n": i}) for i in range(10)])
    engine = app.engine
    seen: list[tuple[int, int]] = []
    chunks: list[list[int]] = []

    async def cancel(chunk: Sequence[int]) -> list[Job]:
        chunks.append(list(chunk))
        if len(chunks) == 1:  # a matching job arrives while the action runs
            await app.insert(mailer.new({"n": "late"}))
        return await engine.cancel_jobs(chunk)

    where = JobFilter(queues=("mail",))
    done = await act_on_matching(engine, cancel, where, lambda d, t: seen.append((d, t)), 3)
    assert done == 10
    assert chunks == [[j.id for j in jobs[i : i + 3]] for i in range(0, 10, 3)]
    assert seen == [(0, 10), (3, 10), (6, 10), (9, 10), (10, 10)]
    assert sql("SELECT args->>'n', state::text FROM oban_jobs WHERE id > %s", (jobs[-1].id,)) == [
        ("late", "available")
    ]


def _row(uuid: str, queue: str, counts: dict[str, int], started: int = 0) -> dict[str, Any]:
    at = datetime(2030, 1, 1, 0, 0, started)
    return {"uuid": uuid, "queue": queue, "node": "n", "counts": counts, "started_at": at,
            "updated_at": datetime(2030, 1, 1, 0, 0, 30)}  # fmt: skip


def test_throughput_is_the_delta_of_cumulative_counts() -> None:
    meter = Throughput()
    assert meter.update([_row("a", "q", {"completed": 100})], now=10.0) is None
    rates = meter.update(
        [_row("a", "q", {"completed": 120, "retryable": 2, "discarded": 2}),
         _row("b", "q", {"completed": 1000})],  # seen first, started before the last report
        now=12.0,
    )  # fmt: skip
    assert rates == {"q": (10.0, 2.0)}
    rates = meter.update(
        [_row("a", "q", {"completed": 5}),  # restarted under the same id: counts from zero
         _row("c", "q", {"completed": 4}, started=40)],  # new since the last report
        now=13.0,
    )  # fmt: skip
    assert rates == {"q": (9.0, 0.0)}  # b vanished: ignored, never negative
