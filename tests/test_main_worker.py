"""Workers defined in `__main__`: refused at insert unless they get a real module name.

A script's `__main__` exists in that process only, so a job stored as `__main__.hello`
could run on no other node. These tests run real scripts in subprocesses, since what
`__main__` is depends on how Python was started.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import eventually

from kerrera import ConfigError, Job, Kerrera
from kerrera.core.worker import check_main_workers

INSERTING_SCRIPT = """
    import sys
    from kerrera import Job, Kerrera, worker

    @worker(queue="default")
    async def hello(job: Job) -> None:
        print("hello ran")

    if __name__ == "__main__":
        dsn, prefix, how = sys.argv[1:4]
        app = Kerrera(dsn, prefix=prefix)      # no queues: this process only inserts
        if how == "sync":
            job = app.sync.insert(hello.new({"n": 1}))
        else:
            import asyncio
            async def main() -> Job:
                async with app:
                    return await app.insert(hello.new({"n": 1}))
            job = asyncio.run(main())
        print("stored as", job.worker)
"""


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> Any:
    full = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only what we give
    full.update(env or {})
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=60
    )


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def _workers(sql: Callable[..., list[tuple[Any, ...]]]) -> list[str]:
    if sql("SELECT to_regclass('oban_jobs')") == [(None,)]:
        return []  # refused before the schema was even created
    return [row[0] for row in sql("SELECT worker FROM oban_jobs ORDER BY id")]


@pytest.mark.parametrize("how", ["async", "sync"])
def test_a_script_inserting_its_own_worker_is_refused_with_a_hint(
    tmp_path: Path, dsn: str, prefix: str, sql: Callable[..., Any], how: str
) -> None:
    script = _write(tmp_path / "enqueue.py", INSERTING_SCRIPT)
    done = _run([str(script), dsn, prefix, how], cwd=tmp_path)
    assert done.returncode == 1, done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("kerrera.core.errors.ConfigError: worker '__main__.hello'"), last
    assert "Move hello into a module, e.g. tasks.py, and import it" in last
    assert "python -m pkg.module" in last
    assert _workers(sql) == []  # nothing was stored


async def test_a_script_started_with_dash_m_stores_its_module_name_and_a_node_runs_it(
    tmp_path: Path, dsn: str, prefix: str, make_app: Callable[..., Kerrera],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    package = f"probe_{uuid.uuid4().hex[:8]}"  # unique: this process imports it below
    _write(tmp_path / package / "__init__.py", "")
    _write(tmp_path / package / "enqueue.py", INSERTING_SCRIPT)
    done = _run(["-m", f"{package}.enqueue", dsn, prefix, "sync"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"stored as {package}.enqueue.hello"

    # Another process (this one) imports the module by that name and runs the job.
    monkeypatch.syspath_prepend(str(tmp_path))
    app = make_app(queues={"default": 1})
    await app.start()

    async def completed() -> bool:
        job = await app.get_job(1)
        return job is not None and job.state.value == "completed"

    await eventually(completed, timeout=20)


def test_a_package_run_with_dash_m_is_refused_as_its_main_is_the_program(
    tmp_path: Path, dsn: str, prefix: str
) -> None:
    _write(tmp_path / "tool" / "__init__.py", "")
    _write(tmp_path / "tool" / "__main__.py", INSERTING_SCRIPT)
    done = _run(["-m", "tool", dsn, prefix, "sync"], cwd=tmp_path)
    assert done.returncode == 1, done.stdout
    assert "ConfigError: worker '__main__.hello' is defined in the script" in done.stderr


def test_a_script_file_under_another_sys_path_entry_stores_its_module_name(
    tmp_path: Path, dsn: str, prefix: str, sql: Callable[..., Any]
) -> None:
    script = _write(tmp_path / "app" / "jobs" / "enqueue.py", INSERTING_SCRIPT)
    done = _run([str(script), dsn, prefix, "sync"], cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "stored as app.jobs.enqueue.hello"
    assert _workers(sql) == ["app.jobs.enqueue.hello"]


def test_a_script_that_runs_its_own_node_runs_its_main_workers(
    tmp_path: Path, dsn: str, prefix: str, sql: Callable[..., Any]
) -> None:
    script = _write(
        tmp_path / "quickstart.py",
        """
        import asyncio, sys
        from kerrera import Job, Kerrera, worker

        @worker(queue="default")
        async def hello(job: Job) -> None:
            print("hello ran", job.args["n"])

        async def main() -> None:
            async with Kerrera(sys.argv[1], prefix=sys.argv[2], queues={"default": 1}) as app:
                job = await app.insert(hello.new({"n": 1}))
                while (await app.get_job(job.id)).state.value != "completed":
                    await asyncio.sleep(0.02)  # the test's timeout bounds this

        asyncio.run(main())
        """,
    )
    done = _run([str(script), dsn, prefix], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "hello ran 1" in done.stdout
    assert sql("SELECT worker, state::text FROM oban_jobs") == [("__main__.hello", "completed")]


def test_only_main_jobs_of_queues_this_process_serves_pass() -> None:
    ok = Job(worker="__main__.hello", queue="default")
    check_main_workers([ok, Job(worker="tasks.hello", queue="mail")], runs_here={"default"})
    with pytest.raises(ConfigError, match=r"'__main__\.hello' is defined in the script"):
        check_main_workers([Job(worker="__main__.hello", queue="mail")], runs_here={"default"})


def test_inline_testing_mode_runs_main_workers_in_the_caller(
    tmp_path: Path, dsn: str, prefix: str
) -> None:
    script = _write(
        tmp_path / "inline.py",
        """
        import sys
        from kerrera import Job, Kerrera, worker

        @worker
        def hello(job: Job) -> None:
            print("hello ran inline")

        Kerrera(sys.argv[1], prefix=sys.argv[2], testing="inline").sync.insert(hello.new())
        """,
    )
    done = _run([str(script), dsn, prefix], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "hello ran inline" in done.stdout
