"""What an operator meets first, through the installed command against the real
database: bulk actions that ask first, queue names with typos, inserting from the
shell, running jobs in `kerrera top`, tables that fit 80 columns, and job histories
that read right (timeline order, runs and attempts left)."""

# ruff: noqa: F811  (the `cli` and `jobs` fixtures come from test_cli_ops)
from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import signal
import subprocess
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import eventually
from support.scripted import Scripted, gate
from test_cli_ops import KERRERA, _env, _states, cli, jobs  # noqa: F401 (fixtures)
from test_inspect import mailer, mark

from kerrera import ConfigError, Job, JobState, Kerrera, worker
from kerrera.cli import parse_queues
from kerrera.cli._render import fit, shorten_worker
from kerrera.cli.jobs import runs_text, timeline

Sql = Callable[..., list[tuple[Any, ...]]]
Run = Callable[..., subprocess.CompletedProcess[str]]
TESTS = Path(__file__).parent
LONG_WORKER = "myapp.notifications.transactional.mail.SendWelcomeEmail"


@worker(queue="default", max_attempts=3)
async def halfway(job: Job) -> None:
    """Reports progress, then waits for the test to let it go."""
    await job.progress(42, "encoding stems")
    await gate("halfway").wait()


def _tty_stdin(args: list[str], answer: str) -> tuple[int, str, str]:
    """Run `kerrera ARGS` with stdin on a pseudo-terminal (a person at the keyboard)
    who types `answer`; stdout and stderr are pipes. (exit code, stdout, stderr)."""
    main, child = pty.openpty()
    try:
        proc = subprocess.Popen(
            [KERRERA, *args], stdin=child, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=_env(), text=True,
        )  # fmt: skip
        os.close(child)
        os.write(main, answer.encode())  # the terminal keeps the line until it is read
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(main)
    return proc.returncode, out, err


def _listed(text: str) -> list[int]:
    """The ids of the rows of the table in `text` (after its ID heading)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["ID"])
    rows = (line.split() for line in lines[start + 1 :])
    return sorted(int(cells[0]) for cells in rows if cells and cells[0].isdigit())


def _interrupted_at_the_prompt(args: list[str]) -> int:
    """Ctrl-C while `kerrera ARGS` asks: its exit code (stderr must say nothing changed)."""
    main, child = pty.openpty()
    try:
        with subprocess.Popen(
            [KERRERA, *args], stdin=child, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env=_env(),
        ) as proc:  # fmt: skip
            os.close(child)
            assert proc.stderr is not None
            said = b""
            while b"[y/N]" not in said:
                chunk = os.read(proc.stderr.fileno(), 4096)
                assert chunk, said
                said += chunk
            proc.send_signal(signal.SIGINT)
            said += proc.stderr.read()
            code = proc.wait(timeout=30)
    finally:
        os.close(main)
    assert b"interrupted; nothing changed" in said and b"Traceback" not in said, said
    return code


# -- item 3: bulk actions show, ask, or need --yes -------------------------------------
def test_retry_all_targets_failed_jobs_and_needs_yes_off_a_terminal(
    cli: Run, jobs: dict[str, list[int]], sql: Sql
) -> None:
    before = _states(sql)
    refused = cli("jobs", "retry", "--all")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "2 jobs to retry (state retryable, discarded, cancelled)" in refused.stderr
    assert "add --yes" in refused.stderr and "--dry-run" in refused.stderr
    assert _listed(refused.stderr) == sorted(jobs["discarded"])  # the sample
    assert _states(sql) == before
    dry = cli("jobs", "retry", "--all", "--dry-run")
    assert dry.returncode == 0 and "dry run: nothing changed" in dry.stdout
    assert "2 jobs to retry" in dry.stdout and _listed(dry.stdout) == sorted(jobs["discarded"])
    as_json = json.loads(cli("jobs", "retry", "--all", "--dry-run", "--json").stdout)
    assert as_json["dry_run"] is True and as_json["count"] == 2
    assert sorted(j["id"] for j in as_json["sample"]) == sorted(jobs["discarded"])
    assert _states(sql) == before
    done = cli("jobs", "retry", "--all", "--yes")
    assert (done.returncode, done.stdout.strip()) == (0, "retried 2 jobs")
    states = _states(sql)
    assert {states[i] for i in jobs["discarded"]} == {"available"}
    assert states[jobs["completed"][0]] == "completed"  # never re-run without asking for it
    completed = cli("jobs", "retry", "--all", "--state", "completed", "--yes")
    assert completed.stdout.strip() == "retried 1 job"
    assert _states(sql)[jobs["completed"][0]] == "available"
    assert "completed" in cli("jobs", "retry", "--help").stdout  # the help says so


def test_a_person_at_a_terminal_is_asked(
    dsn: str, prefix: str, jobs: dict[str, list[int]], sql: Sql
) -> None:
    args = ["jobs", "cancel", "--queue", "media", "--dsn", dsn, "--prefix", prefix]
    before = _states(sql)
    code, out, err = _tty_stdin(args, "n\n")
    assert code == 1 and "4 jobs to cancel" in err and "cancel these 4 jobs? [y/N]" in err
    assert "nothing changed" in err and _states(sql) == before
    assert _interrupted_at_the_prompt(args) == 130 and _states(sql) == before
    code, out, err = _tty_stdin(args, "y\n")
    assert (code, out.strip()) == (0, "cancelled 4 jobs")
    media = jobs["media_available"] + jobs["scheduled"]
    assert {_states(sql)[i] for i in media} == {"cancelled"}


def test_a_few_ids_act_at_once_but_a_long_list_asks(cli: Run, client: Kerrera, sql: Sql) -> None:
    many = [j.id for j in client.sync.insert_all([mailer.new({"n": i}) for i in range(12)])]
    mark(sql, many, "discarded")
    refused = cli("jobs", "retry", *map(str, many))
    assert refused.returncode == 2 and "12 jobs to retry (the 12 ids given)" in refused.stderr
    assert set(_states(sql).values()) == {"discarded"}
    few = cli("jobs", "retry", *map(str, many[:3]))
    assert few.returncode == 0 and few.stdout.strip() == "retried 3 jobs"
    nothing = cli("jobs", "cancel", "--state", "completed")
    assert (nothing.returncode, nothing.stdout.strip()) == (
        0, "no jobs to cancel (state completed)",
    )  # fmt: skip


# -- item 4: queue names with typos ---------------------------------------------------
def test_queue_commands_refuse_names_nothing_has_used(
    cli: Run, jobs: dict[str, list[int]], sql: Sql, client: Kerrera
) -> None:
    typo = cli("queues", "pause", "meda")
    assert typo.returncode == 2 and "did you mean 'media'?" in typo.stderr
    assert "--force" in typo.stderr and "Traceback" not in typo.stderr
    assert cli("queues", "resume", "nosuch").returncode == 2
    assert cli("queues", "scale", "defualt", "3").returncode == 2
    assert sql("SELECT count(*) FROM kerrera_queues")[0][0] == 0  # nothing persisted
    assert cli("queues", "pause", "media").returncode == 0  # only jobs have used it
    forced = cli("queues", "pause", "nosuch", "--force")
    assert forced.returncode == 0 and "--force" in forced.stderr
    new = cli("queues", "start", "exports", "2")  # a new queue, not close to another
    assert new.returncode == 0 and "is new" in new.stderr
    assert cli("queues", "start", "meida", "2").returncode == 2  # close to 'media'
    node = cli("queues", "pause", "media", "--node", "nobody")
    assert node.returncode == 2 and "no live node is named 'nobody'" in node.stderr
    assert {q for (q,) in sql("SELECT queue FROM kerrera_queues")} == {
        "media", "nosuch", "exports",
    }  # fmt: skip
    # a queue only finished jobs have used is known too (read from the index)
    old = client.sync.insert(mailer.new({}, queue="archive"))
    mark(sql, [old.id], "completed")
    assert cli("queues", "pause", "archive").returncode == 0


def test_parse_queues_refuses_malformed_lists() -> None:
    assert parse_queues("default:10,media:2") == {"default": 10, "media": 2}
    assert parse_queues("default") == {"default": 10}  # a bare name: the default limit
    assert parse_queues("v2:3") == {"v2": 3}
    for text, message in [
        ("default10", "did you mean 'default:10'"), ("media:0", "must be >= 1"),
        (":3", "empty queue name"), ("a,,b", "empty entry"), ("a:1,a:2", "named twice"),
        ("media:many", "bad limit"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError, match=message):
            parse_queues(text)


def test_start_refuses_a_queue_list_without_colons(dsn: str, prefix: str) -> None:
    started = subprocess.run(
        [KERRERA, "start", "--queues", "default10", "--dsn", dsn, "--prefix", prefix],
        capture_output=True, text=True, env=_env(), timeout=60, check=False,
    )  # fmt: skip
    assert started.returncode == 2 and "Traceback" not in started.stderr
    assert "kerrera: error: option '--queues'" in started.stderr
    assert "did you mean 'default:10'" in started.stderr


# -- item 8: insert from the shell, top shows progress, 80 columns --------------------
def test_jobs_insert_from_the_shell(dsn: str, prefix: str, client: Kerrera) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [KERRERA, "jobs", "insert", *args, "--dsn", dsn, "--prefix", prefix],
            capture_output=True, text=True, env=_env(), timeout=60, check=False, cwd=TESTS,
        )  # fmt: skip

    client.sync.migrate()
    known = run("support.scripted.Scripted", "--args", '{"do": "ok"}', "--json")
    assert known.returncode == 0, known.stderr
    job = json.loads(known.stdout)
    # importable here: the worker's own defaults apply
    assert (job["queue"], job["max_attempts"], job["args"]) == ("default", 3, {"do": "ok"})
    by_name = run(LONG_WORKER, "--args", '{"to": "ann@example.com"}', "--queue", "mail",
                  "--priority", "2", "--max-attempts", "5", "--schedule-in", "60")  # fmt: skip
    assert by_name.returncode == 0 and "not importable here" in by_name.stderr
    assert "in queue mail, scheduled" in by_name.stdout
    stored = client.sync.list_jobs(worker=LONG_WORKER)[0]
    assert (stored.queue, stored.priority, stored.max_attempts) == ("mail", 2, 5)
    assert stored.args == {"to": "ann@example.com"} and stored.state is JobState.SCHEDULED
    typo = run("support.scripted.Scriptd")  # the module imports: a typo no node could run
    assert typo.returncode == 2 and "did you mean support.scripted.Scripted?" in typo.stderr
    at = run("support.scripted.Scripted", "--at", "2030-01-31T09:00:00Z", "--json")
    assert json.loads(at.stdout)["scheduled_at"].startswith("2030-01-31T09:00:00")
    for args, option in [
        (["--args", '{"to": '], "option '--args': not valid JSON"),
        (["--args", "[1, 2]"], "option '--args' must be a JSON object"),
        (["--at", "tomorrow"], "option '--at'"), (["--priority", "12"], "option 'priority'"),
    ]:  # fmt: skip
        bad = run("support.scripted.Scripted", *args)
        assert bad.returncode == 2 and f"kerrera: error: {option}" in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr


async def test_top_shows_running_jobs_with_their_progress(cli: Run, make_app: Any) -> None:
    app = make_app(queues={"default": 2})
    await app.start()
    job = await app.insert(halfway.new({}))

    async def reported() -> bool:
        found = await app.get_job(job.id or 0)
        return found is not None and "progress" in found.meta

    await eventually(reported)
    top = await asyncio.to_thread(cli, "top", "--once", "--interval", "0.2")
    assert top.returncode == 0, top.stderr
    rows = top.stdout[top.stdout.index("running jobs") :].splitlines()[2:]
    row = next(line.split() for line in rows if line.split()[:1] == [str(job.id)])
    assert row[1:4] == ["default", halfway.name, "1"] and row[5:] == ["42%", "encoding", "stems"]
    assert max(len(line) for line in top.stdout.splitlines()) <= 80
    gate("halfway").set()


def test_tables_fit_80_columns_keeping_class_names(
    cli: Run, client: Kerrera, dsn: str, prefix: str
) -> None:
    client.sync.insert(Job(worker=LONG_WORKER, queue="notifications", args={"body": "x" * 200}))
    listed = cli("jobs", "list")
    lines = listed.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "SendWelcomeEmail" in lines[1] and "…" in lines[1]
    wide = subprocess.run(
        [KERRERA, "jobs", "list", "--dsn", dsn, "--prefix", prefix], capture_output=True,
        text=True, env=_env(COLUMNS="400"), timeout=60, check=False,
    )  # fmt: skip
    assert LONG_WORKER in wide.stdout and "x" * 200 in wide.stdout
    # on a terminal of 80 columns too (rich's tables)
    main, child = pty.openpty()
    with subprocess.Popen(
        [KERRERA, "jobs", "list", "--dsn", dsn, "--prefix", prefix], stdout=child,
        stderr=subprocess.PIPE, env=_env(COLUMNS="80", NO_COLOR="1"),
    ) as proc:  # fmt: skip
        os.close(child)
        chunks = []
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        os.close(main)
        assert proc.wait(timeout=60) == 0
    text = re.sub(r"\x1b\[[0-9;]*m", "", b"".join(chunks).decode())  # bold stays
    shown = text.replace("\r", "").splitlines()
    assert max(len(line) for line in shown) <= 80 and "SendWelcomeEmail" in shown[2]


def test_shortening_keeps_the_class_name() -> None:
    assert shorten_worker("myapp.mail.SendWelcome", 40) == "myapp.mail.SendWelcome"
    assert shorten_worker("myapp.notifications.mail.SendWelcome", 20) == "…mail.SendWelcome"
    assert shorten_worker("myapp.notifications.mail.SendWelcome", 5) == "…SendWelcome"
    head = ("A", "WORKER", "ARGS")
    rows = [["1", "pkg.sub.Worker", "a" * 50]]  # 1 + 14 + 11 and two gaps of 2: 30
    assert fit(head, rows, 30, [(2, lambda t, w: t[:w], 4)]) == [["1", "pkg.sub.Worker", "a" * 11]]


# -- item 10: timelines in causal order, runs and attempts left ------------------------
def _at(seconds: float) -> datetime:
    return datetime(2030, 1, 1, 10, 0, 0) + timedelta(seconds=seconds)


def _iso(seconds: float) -> str:
    return _at(seconds).isoformat() + "Z"


def test_timeline_follows_cause_and_effect_whatever_the_clocks() -> None:
    # The error times come from the worker's host; here its clock is behind the
    # database's (the error seems to precede its attempt) or ahead (after the end).
    for skew in (-0.5, 0.0, 0.5):
        job = Job(
            id=1, worker="w.W", state=JobState.DISCARDED, attempt=2, max_attempts=2,
            inserted_at=_at(0), scheduled_at=_at(0), attempted_at=_at(10),
            attempted_by=["n1", "p"], discarded_at=_at(10.1),
            errors=[{"at": _iso(5 + skew), "attempt": 1, "error": "E: one"},
                    {"at": _iso(10.05 + skew), "attempt": 2, "error": "E: two"}],
        )  # fmt: skip
        assert [label for _, label in timeline(job)] == [
            "inserted", "attempt 1 failed: E: one", "attempt 2 started on n1",
            "attempt 2 failed: E: two", "discarded",
        ], skew  # fmt: skip
    same = Job(
        id=2, worker="w.W", state=JobState.DISCARDED, attempt=1, max_attempts=1,
        inserted_at=_at(0), scheduled_at=_at(0), attempted_at=_at(0), discarded_at=_at(0),
        errors=[{"at": _iso(0), "attempt": 1, "error": "E: now"}],
    )  # fmt: skip
    assert [label for _, label in timeline(same)] == [
        "inserted", "attempt 1 started", "attempt 1 failed: E: now", "discarded",
    ]  # fmt: skip
    cancelled = Job(
        id=3, worker="w.W", state=JobState.CANCELLED, inserted_at=_at(0),
        scheduled_at=_at(3600), cancelled_at=_at(60),
    )  # fmt: skip
    assert [label for _, label in timeline(cancelled)] == ["inserted", "cancelled", "due"]


def test_runs_text_counts_runs_and_attempts_left() -> None:
    job = Job(worker="w.W", state=JobState.AVAILABLE, attempt=3, max_attempts=6,
              meta={"released": 1})  # fmt: skip
    assert runs_text(job) == "3 (1 released) · 3 attempts left"
    done = Job(worker="w.W", state=JobState.COMPLETED, attempt=2, max_attempts=20,
               meta={"snoozed": 1})  # fmt: skip
    assert runs_text(done) == "2 (1 snoozed)"


async def test_a_job_released_at_shutdown_reads_right(cli: Run, make_app: Any) -> None:
    app = make_app(queues={"default": 1})
    await app.start()
    job = await app.insert(Scripted.new({"do": "block", "key": "held"}))  # max_attempts 3

    async def running() -> bool:
        found = await app.get_job(job.id or 0)
        return found is not None and found.state == "executing"

    await eventually(running)
    await app.stop(grace=0.1)  # interrupted: put back without spending the attempt
    released = await app.get_job(job.id or 0)
    assert released is not None and released.state == "available"
    assert (released.attempt, released.max_attempts) == (1, 4)
    assert released.meta["released"] == 1
    shown = await asyncio.to_thread(cli, "jobs", "show", str(job.id))
    assert "runs          1 (1 released) · 3 attempts left" in shown.stdout
    listed = await asyncio.to_thread(cli, "jobs", "list")
    assert "1 (3 left)" in listed.stdout and "1/4" not in listed.stdout
    assert "RUNS" in listed.stdout.splitlines()[0]
