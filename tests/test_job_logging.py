"""Job outcomes are never silent: a running node logs one line per job on `kerrera.jobs`
(failed: WARNING with the exception's line; discarded: ERROR with the traceback;
cancelled: WARNING; finished: INFO), and `--log-events` keeps idle service runs at DEBUG."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from conftest import eventually
from support.scripted import Scripted

from kerrera import telemetry
from kerrera.telemetry.joblog import JOB_LOGGER


def _lines(caplog: pytest.LogCaptureFixture, job_id: int | None) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records
        if r.name == JOB_LOGGER and getattr(r, "job_id", None) == job_id
    ]  # fmt: skip


async def test_one_line_per_outcome_at_the_right_level(
    make_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=JOB_LOGGER)
    app = make_app(queues={"default": 4}, stage_interval=0.1)
    async with app:
        done = await app.insert(Scripted.new({"do": "ok"}))
        retried = await app.insert(Scripted.new({"do": "fail_until", "times": 2}))
        lost = await app.insert(Scripted.new({"do": "error", "message": "boom"}, max_attempts=1))
        dropped = await app.insert(Scripted.new({"do": "cancel", "reason": "not needed"}))
        await eventually(lambda: len(_lines(caplog, retried.id)) >= 2)
        await eventually(lambda: all(_lines(caplog, j.id) for j in (done, lost, dropped)))

    [ok] = _lines(caplog, done.id)
    assert ok.levelno == logging.INFO and ok.exc_info is None
    text = ok.getMessage()
    assert f"job {done.id} {Scripted.name} completed in " in text
    assert "queue default, attempt 1/3" in text and ok.duration >= 0  # type: ignore[attr-defined]

    failed, finished = _lines(caplog, retried.id)
    assert failed.levelno == logging.WARNING and failed.exc_info is None
    assert "attempt 1/3; will retry" in failed.getMessage()
    assert failed.getMessage().endswith("ValueError: failing attempt 1")
    assert finished.levelno == logging.INFO and "attempt 2/3" in finished.getMessage()

    [gone] = _lines(caplog, lost.id)
    assert gone.levelno == logging.ERROR and "discarded" in gone.getMessage()
    assert gone.getMessage().endswith("RuntimeError: boom")
    assert gone.exc_info is not None and isinstance(gone.exc_info[1], RuntimeError)
    assert "Traceback" in caplog.text and "_act" in caplog.text  # the worker's frame

    [cancelled] = _lines(caplog, dropped.id)
    assert cancelled.levelno == logging.WARNING and "cancelled" in cancelled.getMessage()
    # The handler lives only while a node runs: a process with none pays nothing.
    assert JOB_LOGGER not in telemetry.handlers()


async def test_a_level_above_error_spares_the_job_events(
    make_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    jobs_log = logging.getLogger(JOB_LOGGER)
    jobs_log.setLevel(logging.CRITICAL)
    try:
        app = make_app(queues={"default": 1}, stage_interval=0.1)
        async with app:
            assert JOB_LOGGER not in telemetry.handlers()
            job = await app.insert(Scripted.new({"do": "error"}, max_attempts=1))
            await eventually(lambda: any(r[0] == job.id for r in _runs()))
        assert not _lines(caplog, job.id)
    finally:
        jobs_log.setLevel(logging.NOTSET)


def _runs() -> list[tuple[int, int, dict[str, Any]]]:
    from support.scripted import RUNS

    return RUNS


def test_an_unconfigured_app_still_shows_failures(dsn: str, prefix: str) -> None:
    """No logging set up at all: Python's last resort prints WARNING and up to stderr."""
    script = textwrap.dedent(
        f"""
        import asyncio
        from kerrera import Kerrera
        from support.scripted import Scripted

        async def main():
            app = Kerrera({dsn!r}, prefix={prefix!r}, queues={{"default": 2}},
                          stage_interval=0.1)
            async with app:
                ok = await app.insert(Scripted.new({{"do": "ok"}}))
                job = await app.insert(
                    Scripted.new({{"do": "error", "message": "kaput"}}, max_attempts=1))
                while (await app.get_job(job.id)).state != "discarded" or (
                        await app.get_job(ok.id)).state != "completed":
                    await asyncio.sleep(0.05)

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        env=_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    failed = [line for line in done.stderr.splitlines() if "no attempts left" in line]
    assert len(failed) == 1 and failed[0].endswith("RuntimeError: kaput")
    assert "Traceback" in done.stderr  # a discarded job's traceback
    assert "completed in" not in done.stderr  # INFO stays quiet until asked for


def _env() -> dict[str, str]:
    from acceptance.nodes import _env as node_env

    return node_env()


def test_idle_service_runs_are_debug_lines(caplog: pytest.LogCaptureFixture) -> None:
    telemetry.attach_default_logger("info")
    try:
        caplog.set_level(logging.DEBUG, logger="kerrera.events")
        telemetry.execute("stager", {"count": 0, "duration": 0.001}, {"error": None})
        telemetry.execute("stager", {"count": 3, "duration": 0.001}, {"error": None})
        telemetry.execute("lifeline", {"rescued": 0, "expired": 0, "duration": 0.1}, {})
        telemetry.execute("leader.election", {"duration": 0.001}, {"leader": True})
        telemetry.execute("pruner", {"count": 0, "duration": 0.001}, {"error": OSError("x")})
    finally:
        telemetry.detach(telemetry.DEFAULT_LOGGER)
    levels = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "kerrera.events"]
    assert [level for level, _ in levels] == [
        logging.DEBUG, logging.INFO, logging.DEBUG, logging.DEBUG, logging.WARNING,
    ]  # fmt: skip
    assert '"count":3' in levels[1][1].replace(" ", "")
