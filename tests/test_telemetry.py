"""Telemetry: the bus itself, every job outcome's events and metadata, inserts,
producers, services, and the default JSON logger."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import eventually
from support import scripted
from support.scripted import Scripted, Slow

from kerrera import ConfigError, Job, JobState, telemetry, worker

Seen = list[tuple[str, dict[str, Any], dict[str, Any]]]


@pytest.fixture
def seen() -> Iterator[Seen]:
    """Every Kerrera event, recorded; the handler is detached afterwards."""
    events: Seen = []
    telemetry.attach("test-recorder", "*", lambda e, m, md: events.append((e, m, md)))
    yield events
    telemetry.detach("test-recorder")
    telemetry.detach(telemetry.DEFAULT_LOGGER)


def of(
    seen: Seen, name: str, job_id: int | None = None
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [
        (m, md) for e, m, md in seen if e == name and (job_id is None or md.get("id") == job_id)
    ]


@worker(queue="default", max_attempts=1)
async def vanishing(job: Job) -> None:
    """Fails for good at its first attempt."""
    raise LookupError("gone for good")


# -- the bus ------------------------------------------------------------------------------
def test_attach_validates_and_detach_reports() -> None:
    calls: list[str] = []
    telemetry.attach("t1", ["job.stop", "app.custom"], lambda e, m, md: calls.append(e))
    try:
        with pytest.raises(ConfigError, match="already attached"):
            telemetry.attach("t1", "job.stop", lambda e, m, md: None)
        with pytest.raises(ConfigError, match=r"did you mean 'job\.stop'"):
            telemetry.attach("t2", ["job.stopp"], lambda e, m, md: None)
        with pytest.raises(ConfigError, match="only a trailing"):
            telemetry.attach("t2", ["job.*.x*"], lambda e, m, md: None)
        with pytest.raises(ConfigError, match="not callable"):
            telemetry.attach("t2", ["job.stop"], "nope")  # type: ignore[arg-type]
        telemetry.execute("app.custom", {}, {})
        telemetry.execute("job.start", {}, {})
        assert calls == ["app.custom"]
        assert "t1" in telemetry.handlers()
        assert telemetry.active("job.stop") and not telemetry.active("job.start")
    finally:
        assert telemetry.detach("t1") is True
    assert telemetry.detach("t1") is False
    assert not telemetry.active("job.stop")


def test_patterns_match_prefixes() -> None:
    calls: list[str] = []
    telemetry.attach("t-pattern", ["job.*"], lambda e, m, md: calls.append(e))
    try:
        for name in ("job.start", "insert", "job.stop", "producer.fetch"):
            telemetry.execute(name, {}, {})
    finally:
        telemetry.detach("t-pattern")
    assert calls == ["job.start", "job.stop"]


def test_timed_reports_duration_and_error() -> None:
    calls: list[tuple[dict[str, Any], dict[str, Any]]] = []
    telemetry.attach("t-timed", ["app.step"], lambda e, m, md: calls.append((m, md)))
    try:
        with telemetry.timed("app.step", {"what": "a"}) as m:
            m["count"] = 3
        with pytest.raises(KeyError), telemetry.timed("app.step", {"what": "b"}):
            raise KeyError("x")
    finally:
        telemetry.detach("t-timed")
    assert calls[0][0]["count"] == 3 and calls[0][0]["duration"] >= 0
    assert calls[0][1] == {"what": "a", "error": None}
    assert isinstance(calls[1][1]["error"], KeyError)


async def test_a_raising_handler_is_detached_and_the_job_still_completes(
    make_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: str, measurements: dict[str, Any], metadata: dict[str, Any]) -> None:
        raise RuntimeError("handler bug")

    telemetry.attach("t-broken", ["job.start"], broken)
    telemetry.attach("t-stop", ["job.stop"], lambda e, m, md: None)
    try:
        app = make_app(queues={"default": 2})
        async with app:
            job = await app.insert(Scripted.new({"do": "ok"}))
            done = await eventually(lambda: _state(app, job.id, JobState.COMPLETED))
        assert done.state is JobState.COMPLETED
        assert "t-broken" not in telemetry.handlers()
        assert "handler bug" in caplog.text and "detached" in caplog.text
    finally:
        telemetry.detach("t-broken")
        telemetry.detach("t-stop")


async def _state(app: Any, job_id: int, state: JobState) -> Any:
    job = await app.get_job(job_id)
    return job if job is not None and job.state is state else None


# -- job events, one test per outcome ------------------------------------------------------
JOB_KEYS = {"job", "id", "worker", "queue", "attempt", "max_attempts", "tags", "priority", "node"}


async def _run_one(make_app: Any, seen: Seen, job: Job, count: int = 1, **opts: Any) -> Any:
    app = make_app(queues={"default": 2}, stage_interval=0.1, **opts)
    async with app:
        saved = await app.insert(job)
        await eventually(lambda: len(of(seen, "job.stop", saved.id)) >= count)
    return saved


async def test_completed_job_events(make_app: Any, seen: Seen) -> None:
    job = await _run_one(make_app, seen, Scripted.new({"do": "record", "value": {"n": 1}}))
    [(start_m, start_md)] = of(seen, "job.start", job.id)
    [(stop_m, stop_md)] = of(seen, "job.stop", job.id)
    assert set(start_md) >= JOB_KEYS and set(stop_md) >= JOB_KEYS
    assert start_md["worker"] == Scripted.name and start_md["queue"] == "default"
    assert start_md["attempt"] == 1 and start_md["job"].id == job.id
    assert start_m["queue_time"] >= 0 and start_m["system_time"] > 1e9
    assert stop_md["state"] == "completed" and stop_md["result"] == {"n": 1}
    assert stop_m["duration"] >= 0 and stop_m["queue_time"] == start_m["queue_time"]
    assert of(seen, "job.exception", job.id) == []
    names = [e for e, _, md in seen if md.get("id") == job.id]
    assert names == ["job.start", "job.stop"]


async def test_retryable_then_completed_job_events(make_app: Any, seen: Seen) -> None:
    job = await _run_one(make_app, seen, Scripted.new({"do": "fail_until", "times": 2}), 2)
    [(exc_m, exc_md)] = of(seen, "job.exception", job.id)
    assert exc_md["state"] == "retryable" and exc_md["kind"] == "error"
    assert isinstance(exc_md["exception"], ValueError)
    assert "failing attempt 1" in exc_md["error"]
    assert "Traceback" in exc_md["traceback"] and "_act" in exc_md["traceback"]
    assert exc_m["duration"] >= 0
    states = [md["state"] for _, md in of(seen, "job.stop", job.id)]
    assert states == ["retryable", "completed"]


async def test_discarded_job_events(make_app: Any, seen: Seen) -> None:
    job = await _run_one(make_app, seen, vanishing.new({}))
    [(_, exc_md)] = of(seen, "job.exception", job.id)
    assert exc_md["state"] == "discarded" and isinstance(exc_md["exception"], LookupError)
    [(_, stop_md)] = of(seen, "job.stop", job.id)
    assert stop_md["state"] == "discarded"


async def test_snoozed_and_cancelled_job_events(make_app: Any, seen: Seen) -> None:
    snoozed = await _run_one(make_app, seen, Scripted.new({"do": "snooze", "seconds": 0.1}), 2)
    assert [md["state"] for _, md in of(seen, "job.stop", snoozed.id)] == ["snoozed", "completed"]
    cancelled = await _run_one(make_app, seen, Scripted.new({"do": "cancel"}))
    assert [md["state"] for _, md in of(seen, "job.stop", cancelled.id)] == ["cancelled"]
    assert of(seen, "job.exception", snoozed.id) == of(seen, "job.exception", cancelled.id) == []


async def test_timeout_and_unknown_worker_kinds(make_app: Any, seen: Seen) -> None:
    slow = await _run_one(make_app, seen, Slow.new({"seconds": 5}), 2)
    kinds = [md["kind"] for _, md in of(seen, "job.exception", slow.id)]
    assert kinds == ["timeout", "timeout"]
    ghost = await _run_one(make_app, seen, Job(worker="nowhere.Ghost", max_attempts=1))
    [(_, md)] = of(seen, "job.exception", ghost.id)
    assert md["kind"] == "unknown_worker" and md["state"] == "discarded"
    assert "nowhere.Ghost" in md["error"]


async def test_cancel_job_and_shutdown_end_running_jobs_with_stop(
    make_app: Any, seen: Seen
) -> None:
    app = make_app(queues={"default": 2})
    async with app:
        victim = await app.insert(Scripted.new({"do": "block", "key": "victim"}))
        held = await app.insert(Scripted.new({"do": "block", "key": "held"}))
        await eventually(lambda: len(of(seen, "job.start")) == 2)
        await app.cancel_job(victim.id)
        await eventually(lambda: of(seen, "job.stop", victim.id))
        await app.stop(grace=0.2)
    assert [md["state"] for _, md in of(seen, "job.stop", victim.id)] == ["cancelled"]
    assert [md["state"] for _, md in of(seen, "job.stop", held.id)] == ["released"]
    [(m, md)] = of(seen, "queue.shutdown")
    assert md["queue"] == "default" and md["node"] == app.node
    assert m["running"] == 1 and md["job_ids"] == [held.id]
    assert m["duration"] >= 0.19  # it waited out the 0.2 s grace for the held job


async def test_sync_worker_events(make_app: Any, seen: Seen) -> None:
    job = await _run_one(make_app, seen, scripted.sync_job.new({"do": "error"}), 1)
    [(_, md)] = of(seen, "job.exception", job.id)
    assert isinstance(md["exception"], KeyError) and md["state"] == "retryable"


# -- inserts, producers, services ----------------------------------------------------------
async def test_insert_events_and_meta_added_by_a_handler(make_app: Any, seen: Seen) -> None:
    def stamp(event: str, measurements: dict[str, Any], metadata: dict[str, Any]) -> None:
        for job in metadata["jobs"]:
            job.meta["trace"] = {"traceparent": "00-abc-def-01"}

    telemetry.attach("t-stamp", ["insert.start"], stamp)
    try:
        app = make_app()
        saved = await app.insert_all([Scripted.new({"n": i}) for i in range(3)])
        synced = app.sync.insert(Scripted.new({"n": 9}, queue="other"))
    finally:
        telemetry.detach("t-stamp")
    assert all(j.meta["trace"] == {"traceparent": "00-abc-def-01"} for j in saved)
    assert (await app.get_job(synced.id)).meta["trace"]["traceparent"] == "00-abc-def-01"
    starts, inserts = of(seen, "insert.start"), of(seen, "insert")
    assert [m["count"] for m, _ in starts] == [3, 1]
    assert [(m["count"], m["conflicts"]) for m, _ in inserts] == [(3, 0), (1, 0)]
    assert inserts[0][1]["queues"] == ["default"] and inserts[1][1]["queues"] == ["other"]
    assert [j.id for j in inserts[0][1]["jobs"]] == [j.id for j in saved]
    assert inserts[0][0]["duration"] >= 0 and inserts[0][1]["error"] is None


async def test_producer_and_service_events(make_app: Any, seen: Seen) -> None:
    app = make_app(
        queues={"default": 5}, stage_interval=0.1, rescue_interval=0.2,
        heartbeat_interval=0.1, producer_ttl=1.0, prune_interval=0.2,
    )  # fmt: skip
    async with app:
        await app.insert_all([Scripted.new({"do": "ok"}) for _ in range(4)])
        await app.insert(Scripted.new({"do": "ok"}, schedule_in=0.2))
        await eventually(lambda: len(of(seen, "job.stop")) == 5)
        for name in ("stager", "lifeline", "pruner", "leader.election", "producer.ack"):
            await eventually(lambda name=name: of(seen, name))
    fetched = sum(m["count"] for m, _ in of(seen, "producer.fetch"))
    acked = sum(m["count"] for m, _ in of(seen, "producer.ack"))
    assert fetched == 5 and acked == 5, (fetched, acked)
    _, fetch_md = of(seen, "producer.fetch")[0]
    assert fetch_md["queue"] == "default" and fetch_md["node"] == app.node
    staged = [m["count"] for m, md in of(seen, "stager") if md["error"] is None]
    assert sum(staged) == 1
    _, election = of(seen, "leader.election")[0]
    assert election["leader"] is True and election["node"] == app.node
    assert of(seen, "notifier.switch")[0][1]["up"] is True
    assert all("rescued" in m for m, _ in of(seen, "lifeline"))


async def test_cron_event(make_app: Any, seen: Seen) -> None:
    app = make_app(crontab=[("@reboot", Scripted.name)])
    async with app:
        await eventually(lambda: of(seen, "cron"))
    m, md = of(seen, "cron")[0]
    assert m["count"] == 1 and md["jobs"][0].worker == Scripted.name


# -- the default logger ---------------------------------------------------------------------
async def test_default_logger_writes_one_json_object_per_line(
    make_app: Any, seen: Seen, caplog: pytest.LogCaptureFixture
) -> None:
    telemetry.attach_default_logger("info")
    caplog.set_level(logging.INFO, logger="kerrera.events")
    job = await _run_one(make_app, seen, Scripted.new({"do": "fail_until", "times": 2}), 2)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "kerrera.events"]
    mine = [line for line in lines if line.get("id") == job.id]
    assert [line["event"] for line in mine] == ["job.exception", "job.stop", "job.stop"]
    failed, retry, done = mine
    for line in mine:
        assert line["worker"] == Scripted.name and line["queue"] == "default"
        assert isinstance(line["duration"], float) and isinstance(line["queue_time"], float)
    assert failed["state"] == "retryable" and "failing attempt 1" in failed["error"]
    assert retry["attempt"] == 1 and done["attempt"] == 2 and done["state"] == "completed"
    levels = [r.levelno for r in caplog.records if r.name == "kerrera.events"]
    assert logging.WARNING in levels  # failures are logged at WARNING at least
    with pytest.raises(ConfigError, match="unknown level"):
        telemetry.attach_default_logger("loud")
