"""`kerrera demo`, run as a user runs it: the installed command in a subprocess."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kerrera.cli import demo

KERRERA = str(Path(sys.executable).parent / "kerrera")


def run_demo(*options: str, timeout: float = 100) -> subprocess.CompletedProcess[str]:
    """Run `kerrera demo` with `options`, output captured (so stdout is not a terminal)."""
    try:
        return subprocess.run([KERRERA, "demo", *options], capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip
    except subprocess.TimeoutExpired as exc:  # show how far it got
        pytest.fail(
            f"kerrera demo did not end in {timeout}s; stdout:\n{exc.stdout!r}\n"
            f"stderr:\n{exc.stderr!r}"
        )


def test_demo_completes_every_job(
    dsn: str, prefix: str, sql: Callable[..., list[tuple[Any, ...]]]
) -> None:
    done = run_demo("--tracks", "60", "--dsn", dsn, "--prefix", prefix)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "180 completed of 180 jobs" in done.stdout
    assert "\x1b[" not in done.stdout  # piped: plain lines, no bars or colours
    assert "Traceback" not in done.stderr
    rows = sql("SELECT queue, state::text, count(*) FROM oban_jobs GROUP BY 1, 2 ORDER BY 1")
    assert rows == [("analysis", "completed", 60), ("downloads", "completed", 60),
                    ("separation", "completed", 60)]  # fmt: skip


def test_demo_retries_failures_and_records_results(
    dsn: str, prefix: str, sql: Callable[..., list[tuple[Any, ...]]]
) -> None:
    done = run_demo("--tracks", "20", "--fail-rate", "0.5", "--dsn", dsn, "--prefix", prefix)

    assert done.returncode == 0, done.stdout + done.stderr
    failed_once = sql("SELECT count(*) FROM oban_jobs WHERE cardinality(errors) = 1")[0][0]
    assert failed_once > 0  # half of the steps fail once, then succeed
    assert sql("SELECT count(*) FROM oban_jobs WHERE cardinality(errors) > 1") == [(0,)]
    results = sql("SELECT meta->'return' FROM oban_jobs WHERE queue = 'analysis'")
    assert len(results) == 20
    assert all(set(value) == {"bpm", "key"} for (value,) in results)


def test_demo_rejects_bad_options_without_touching_a_database() -> None:
    done = run_demo("--tracks", "0", "--dsn", "postgresql://nobody@127.0.0.1:1/none")

    assert done.returncode == 2
    assert "--tracks must be at least 1" in done.stderr


def test_demo_reports_an_unreachable_database_plainly() -> None:
    done = run_demo("--tracks", "5", "--dsn", "postgresql://nobody@127.0.0.1:1/none")

    assert done.returncode == 2
    assert "cannot use the database" in done.stderr
    assert "Traceback" not in done.stderr


async def test_demo_fails_when_jobs_do_not_finish_in_time(
    dsn: str, prefix: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo, "LIMIT_SECONDS", 0.0)
    monkeypatch.setattr(demo, "LIMIT_SECONDS_PER_TRACK", 0.0)
    args = argparse.Namespace(dsn=dsn, prefix=prefix, data_dir=".kerrera", tracks=50,
                              fail_rate=0.0)  # fmt: skip

    assert await demo.run_demo(args) == 1
    assert "did not finish in time" in capsys.readouterr().out
