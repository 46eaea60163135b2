"""kerrera.testing: modes, enqueued assertions, perform_job and drain_queue, against the
real database; and the pytest plugin's fixtures (the example module for users)."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any

import psycopg
import pytest
from support import scripted
from support.scripted import Scripted

from kerrera import (
    ConfigError,
    Job,
    JobState,
    Kerrera,
    Record,
    Snooze,
    current_app,
    testing,
    worker,
)


@worker(queue="mail", max_attempts=3)
async def send_welcome(job: Job) -> Record:
    """Records who it greeted; fails when asked to."""
    if job.args.get("fail"):
        raise ConnectionError("smtp down")
    await job.progress(100, "sent")
    return Record({"greeted": job.args["to"]})


@worker(queue="mail")
async def fan_out(job: Job) -> None:
    """Inserts one send_welcome per address (for drain recursion)."""
    for to in job.args["to"]:
        await current_app().insert(send_welcome.new({"to": to}))


@worker(queue="mail", max_attempts=1)
def sync_greeter(job: Job) -> Record:
    """A sync worker: runs in a thread even inline."""
    return Record({"thread": threading.current_thread().name})


@worker(queue="mail")
async def snoozer(job: Job) -> Snooze:
    """Always snoozes."""
    return Snooze(60)


# -- modes ------------------------------------------------------------------------------------
async def test_inline_mode_runs_each_insert_at_once_through_the_executor(make_app: Any) -> None:
    app = make_app(queues={"mail": 5})
    with testing.mode("inline"):
        async with app:
            assert app.producers == {}  # no queue runs in a testing mode
            done = await app.insert(send_welcome.new({"to": "a@b.c"}))
            failed = await app.insert(send_welcome.new({"to": "x", "fail": True}))
            later = await app.insert(send_welcome.new({"to": "later"}, schedule_in=3600))
    assert done.state is JobState.COMPLETED and done.meta["return"] == {"greeted": "a@b.c"}
    assert done.meta["progress"]["percent"] == 100 and done.attempt == 1
    assert done.attempted_by == [app.node, "inline"]
    assert failed.state is JobState.RETRYABLE and "smtp down" in failed.errors[0]["error"]
    assert failed.scheduled_at > failed.attempted_at  # backed off, as on a node
    assert later.state is JobState.COMPLETED  # inline runs scheduled jobs too


async def test_inline_inside_the_callers_transaction(make_app: Any, dsn: str, prefix: str) -> None:
    app = make_app(testing="inline")
    async with app:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            job = await app.insert(send_welcome.new({"to": "tx"}), conn=conn)
            assert job.state is JobState.COMPLETED
            assert job.meta["progress"]["percent"] == 100  # kept in memory, not written
            await conn.rollback()
        assert await app.get_job(job.id) is None  # rolled back with the caller


async def test_manual_mode_inserts_without_running(make_app: Any) -> None:
    app = make_app(queues={"mail": 5}, testing="manual")
    async with app:
        job = await app.insert(send_welcome.new({"to": "a@b.c"}))
        assert app.producers == {}  # the configured queue does not run
        assert (await app.get_job(job.id)).state is JobState.AVAILABLE
        with testing.mode("inline"):  # a block wins over the option
            ran = await app.insert(send_welcome.new({"to": "b"}))
        assert ran.state is JobState.COMPLETED
        assert testing.current_mode(app.config.testing) == "manual"


def test_sync_inline_runs_sync_and_async_workers(make_app: Any) -> None:
    app = make_app(testing="inline")
    threaded = app.sync.insert(sync_greeter.new({}))
    awaited = app.sync.insert(send_welcome.new({"to": "s"}))
    assert threaded.state is JobState.COMPLETED
    assert threaded.meta["return"]["thread"] != threading.current_thread().name
    assert awaited.state is JobState.COMPLETED and awaited.meta["return"] == {"greeted": "s"}
    app.sync.close()


def test_modes_are_validated() -> None:
    with pytest.raises(ConfigError, match="option 'testing'"):
        Kerrera("postgresql://x/y", testing="eager")
    with pytest.raises(ConfigError, match="option 'mode'"), testing.mode("later"):
        pass


# -- assertions -------------------------------------------------------------------------------
async def test_assert_enqueued_matches_partially_and_explains_failures(make_app: Any) -> None:
    app = make_app(testing="manual")
    async with app:
        await app.insert(
            send_welcome.new(
                {"to": "a@b.c", "lang": {"code": "en", "region": "GB"}},
                meta={"source": "signup", "ab": 2}, tags=["welcome", "mail"], priority=2,
                schedule_in=60,
            )
        )  # fmt: skip
        job = await testing.assert_enqueued(
            worker=send_welcome, queue="mail", args={"lang": {"code": "en"}},
            meta={"source": "signup"}, tags=["welcome"], priority=2, scheduled_in=60,
        )  # fmt: skip
        assert job.args["to"] == "a@b.c"
        await testing.assert_enqueued(worker=send_welcome.name, scheduled_in=59.5)
        await testing.refute_enqueued(worker=send_welcome, args={"to": "nobody"})
        await testing.refute_enqueued(worker=send_welcome, scheduled_in=120)
        with pytest.raises(AssertionError, match=r"(?s)args=\{'to': 'z'\}.*a@b\.c"):
            await testing.assert_enqueued(worker=send_welcome, args={"to": "z"})
        with pytest.raises(AssertionError, match="expected no job"):
            await testing.refute_enqueued(queue="mail")
        assert len(await testing.all_enqueued(queue="mail")) == 1
        assert await testing.all_enqueued(queue="other") == []
        await app.drain_queue("mail", with_scheduled=True)
        await testing.refute_enqueued(worker=send_welcome)  # completed: no longer enqueued


async def test_helpers_find_the_app_without_app_argument_or_say_so(
    make_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = make_app(testing="manual")
    async with other:
        await other.insert(Scripted.new({"n": 1}))
        assert len(await testing.all_enqueued(worker=Scripted)) == 1
    # No app entered in this context and none started in the process: a clear error.
    from kerrera.core import context as _context

    monkeypatch.setattr(_context, "_LAST", [])
    empty = contextvars.Context()
    with pytest.raises(ConfigError, match="no Kerrera instance"):
        await asyncio.get_running_loop().create_task(
            testing.all_enqueued(worker=Scripted), context=empty
        )


def test_sync_twins(make_app: Any) -> None:
    app = make_app(testing="manual")
    app.sync.insert(send_welcome.new({"to": "sync"}, schedule_in=30))
    job = testing.sync.assert_enqueued(
        worker=send_welcome, args={"to": "sync"}, scheduled_in=30, app=app
    )
    assert job.state is JobState.SCHEDULED
    testing.sync.refute_enqueued(worker=fan_out, app=app)
    with pytest.raises(AssertionError):
        testing.sync.assert_enqueued(worker=fan_out, app=app)
    counts = testing.sync.drain_queue("mail", with_scheduled=True, app=app)
    assert counts["completed"] == 1
    outcome = testing.sync.perform_job(send_welcome, {"to": "p"})
    assert outcome.value == {"greeted": "p"}
    app.sync.close()


# -- perform_job --------------------------------------------------------------------------------
async def test_perform_job_outcomes_and_reprs() -> None:
    ok = await testing.perform_job(send_welcome, {"to": "a"})
    assert ok.state == "completed" and ok.completed and ok.value == {"greeted": "a"}
    assert repr(ok) == "Outcome(completed, value={'greeted': 'a'})"
    assert [p["percent"] for p in ok.progress] == [100]
    failed = await testing.perform_job(send_welcome, {"to": "a", "fail": True})
    assert failed.state == "retryable" and isinstance(failed.exception, ConnectionError)
    assert repr(failed) == "Outcome(retryable, error='ConnectionError: smtp down')"
    assert failed.backoff is not None and failed.backoff > 0
    last = await testing.perform_job(send_welcome, {"to": "a", "fail": True}, attempt=3)
    assert last.state == "discarded"
    snoozed = await testing.perform_job(snoozer, {})
    assert repr(snoozed) == "Outcome(snoozed, snooze=60.0)"
    cancelled = await testing.perform_job(Scripted, {"do": "cancel", "reason": "gone"})
    assert repr(cancelled) == "Outcome(cancelled, reason='gone')"
    by_name = await testing.perform_job(Scripted.name, {"do": "record", "value": 5})
    assert by_name.value == 5 and scripted.RUNS[-1][2] == {"do": "record", "value": 5}


async def test_perform_job_checks_args_and_options() -> None:
    with pytest.raises(ConfigError, match="JSON round trip"):
        await testing.perform_job(send_welcome, {"to": ("a", "b")})
    with pytest.raises(ConfigError, match="JSON"):
        await testing.perform_job(send_welcome, {"to": object()})
    with pytest.raises(ConfigError, match="priority"):
        await testing.perform_job(send_welcome, {"to": "a"}, priority=99)
    with pytest.raises(ConfigError, match="worker"):
        await testing.perform_job(print, {})


# -- drain_queue --------------------------------------------------------------------------------
async def test_drain_queue_counts_and_options(make_app: Any) -> None:
    app = make_app(testing="manual")
    async with app:
        await app.insert_all([send_welcome.new({"to": str(i)}) for i in range(3)])
        await app.insert(send_welcome.new({"to": "bad", "fail": True}))
        await app.insert(send_welcome.new({"to": "later"}, schedule_in=3600))
        counts = await app.drain_queue("mail")
        assert counts == {
            "completed": 3,
            "retryable": 1,
            "discarded": 0,
            "cancelled": 0,
            "snoozed": 0,
        }
        # the retry and the scheduled job run only with_scheduled; with recursion the
        # failing job is retried until its attempts are spent
        counts = await app.drain_queue("mail", with_scheduled=True, with_recursion=True)
        assert counts == {
            "completed": 1,
            "retryable": 1,
            "discarded": 1,
            "cancelled": 0,
            "snoozed": 0,
        }
        assert await app.drain_queue("mail") == dict.fromkeys(counts, 0)


async def test_drain_queue_recursion_runs_jobs_inserted_by_jobs(make_app: Any) -> None:
    app = make_app(testing="manual")
    async with app:
        await app.insert(fan_out.new({"to": ["a", "b"]}))
        assert (await app.drain_queue("mail"))["completed"] == 1
        await testing.assert_enqueued(worker=send_welcome, args={"to": "b"})
        await app.insert(fan_out.new({"to": ["c"]}))
        counts = await app.drain_queue("mail", with_recursion=True)
        assert counts["completed"] == 4  # fan_out, then a, b and c


async def test_drain_queue_without_safety_raises_after_recording(make_app: Any) -> None:
    app = make_app(testing="manual")
    async with app:
        job = await app.insert(send_welcome.new({"to": "x", "fail": True}))
        with pytest.raises(ConnectionError, match="smtp down"):
            await app.drain_queue("mail", with_safety=False)
        assert (await app.get_job(job.id)).state is JobState.RETRYABLE


# -- the pytest plugin's fixtures (the documented example) -------------------------------------
async def test_plugin_fixtures_give_an_isolated_manual_app(kerrera_app: Kerrera) -> None:
    assert kerrera_app.testing_mode == "manual" and kerrera_app.config.prefix.startswith(
        "kerrera_t_"
    )
    await kerrera_app.insert(send_welcome.new({"to": "plugin"}))
    await testing.assert_enqueued(worker=send_welcome, args={"to": "plugin"})
    assert (await kerrera_app.drain_queue("mail"))["completed"] == 1
    await kerrera_app.insert(send_welcome.new({"to": "left behind"}))  # for the next test
    PREFIXES.append(kerrera_app.config.prefix)


async def test_plugin_schema_is_fresh_for_each_test(kerrera_app: Kerrera) -> None:
    assert PREFIXES and kerrera_app.config.prefix not in PREFIXES
    await testing.refute_enqueued(worker=send_welcome)  # the job left behind is not here


PREFIXES: list[str] = []
