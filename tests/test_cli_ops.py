"""The operator commands (`kerrera jobs`, `kerrera queues`, `kerrera top`) run as users
run them: the installed command in a subprocess, against the real database."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from acceptance.nodes import Node, until
from acceptance.nodeworkers import counted
from conftest import eventually
from support.scripted import Scripted
from test_inspect import mailer, mark, thumbs

from kerrera import Kerrera

KERRERA = str(Path(sys.executable).parent / "kerrera")
Sql = Callable[..., list[tuple[Any, ...]]]
#: An SGR sequence that sets a foreground colour (30-37, 90-97 or 38;...).
COLOUR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-8]|9[0-7])(?:;[0-9;]*)?m")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KERRERA_DATABASE_URL", "NO_COLOR")}
    env.pop("DATABASE_URL", None)
    return {**env, **extra}


@pytest.fixture
def cli(dsn: str, prefix: str) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `kerrera ARGS --dsn <test db> --prefix <test schema>`, output captured (so
    stdout is not a terminal)."""

    def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [KERRERA, *args, "--dsn", dsn, "--prefix", prefix], capture_output=True,
            text=True, timeout=timeout, env=_env(), check=False,
        )  # fmt: skip

    return run


@pytest.fixture
def jobs(client: Kerrera, sql: Sql) -> dict[str, list[int]]:
    """mail: 2 available, 2 discarded (with a traceback), 1 completed; media: 3
    available, 1 scheduled. Returns the ids by kind."""
    mail = client.sync.insert_all([mailer.new({"to": f"u{i}@example.com"}) for i in range(5)])
    media = client.sync.insert_all([thumbs.new({"n": i}) for i in range(3)])
    later = client.sync.insert(thumbs.new({"n": 9}, schedule_in=3600))
    ids = {
        "mail_available": [mail[0].id, mail[1].id], "discarded": [mail[2].id, mail[3].id],
        "completed": [mail[4].id], "media_available": [j.id for j in media],
        "scheduled": [later.id],
    }  # fmt: skip
    mark(sql, ids["discarded"], "discarded")
    mark(sql, ids["completed"], "completed")
    error = 'Traceback (most recent call last):\n  File "mail.py", line 9\nOSError: mailbox full'
    sql(
        "UPDATE oban_jobs SET errors = ARRAY[jsonb_build_object('at', "
        "'2030-01-01T10:00:00.250000Z', 'attempt', 1, 'error', %s::text)] WHERE id = ANY(%s)",
        (error, ids["discarded"]),
    )
    return {kind: [int(i) for i in found if i is not None] for kind, found in ids.items()}


def _ids(output: str) -> list[int]:
    """The ids of a plain `jobs list` table (first column, header skipped)."""
    return [int(line.split()[0]) for line in output.splitlines()[1:] if line.strip()]


def _states(sql: Sql) -> dict[int, str]:
    return {int(i): str(s) for i, s in sql("SELECT id, state::text FROM oban_jobs")}


def test_list_filters_and_prints_plain_text_or_json(
    cli: Any, jobs: dict[str, list[int]], dsn: str, prefix: str
) -> None:
    discarded = cli("jobs", "list", "--state", "discarded")
    assert discarded.returncode == 0, discarded.stderr
    assert _ids(discarded.stdout) == jobs["discarded"][::-1]
    assert "discarded" in discarded.stdout and mailer.name in discarded.stdout
    assert "\x1b[" not in discarded.stdout  # piped: no escape codes
    media = json.loads(cli("jobs", "list", "--queue", "media", "--json").stdout)
    assert [j["id"] for j in media] == sorted(jobs["media_available"] + jobs["scheduled"])[::-1]
    assert media[0]["state"] == "scheduled" and media[0]["args"] == {"n": 9}
    two = json.loads(cli("jobs", "list", "--worker", mailer.name, "--limit", "2", "--json").stdout)
    assert [j["id"] for j in two] == [jobs["completed"][0], jobs["discarded"][1]]
    # no --dsn: the same environment variable as the library
    env = _env(KERRERA_DATABASE_URL=dsn)
    mixed = subprocess.run(
        [KERRERA, "jobs", "list", "--state", "scheduled,completed", "--prefix", prefix],
        capture_output=True, text=True, env=env, timeout=30, check=False,
    )  # fmt: skip
    assert _ids(mixed.stdout) == sorted(jobs["scheduled"] + jobs["completed"])[::-1]


def test_bad_options_are_usage_errors(cli: Any, jobs: dict[str, list[int]]) -> None:
    bad = cli("jobs", "list", "--state", "discardd")
    assert bad.returncode == 2
    assert "option 'state'" in bad.stderr and "did you mean 'discarded'" in bad.stderr
    assert "valid states: available" in bad.stderr and "Traceback" not in bad.stderr
    assert cli("jobs", "list", "--limit", "0").returncode == 2
    both = cli("jobs", "retry", str(jobs["discarded"][0]), "--state", "discarded")
    assert both.returncode == 2 and "not both" in both.stderr
    nothing = cli("jobs", "delete")
    assert nothing.returncode == 2 and "--all" in nothing.stderr


async def test_show_prints_args_errors_with_traceback_and_a_timeline(
    cli: Any, make_app: Any
) -> None:
    app = make_app(queues={"default": 1})
    await app.start()
    job = await app.insert(Scripted.new({"do": "error", "message": "disk on fire"}, max_attempts=1))
    await eventually(lambda: _discarded(app, job.id))
    await app.stop()
    shown = cli("jobs", "show", str(job.id))
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert f"job {job.id} discarded" in out and '"do": "error"' in out
    assert "Traceback (most recent call last)" in out and "RuntimeError: disk on fire" in out
    timeline = out[out.index("timeline") :].splitlines()[1:]
    assert [line.split(maxsplit=2)[2] for line in timeline] == [
        "inserted", f"attempt 1 started on {app.node}",
        "attempt 1 failed: RuntimeError: disk on fire", "discarded",
    ]  # fmt: skip
    as_json = json.loads(cli("jobs", "show", str(job.id), "--json").stdout)
    assert as_json["errors"][0]["attempt"] == 1 and as_json["state"] == "discarded"
    missing = cli("jobs", "show", "999999")
    assert missing.returncode == 1 and "no job 999999" in missing.stderr


async def _discarded(app: Kerrera, job_id: int | None) -> bool:
    found = await app.get_job(job_id or 0)
    return found is not None and found.state == "discarded"


def test_retry_cancel_and_delete_by_id(cli: Any, jobs: dict[str, list[int]], sql: Sql) -> None:
    first, second = jobs["discarded"]
    retried = cli("jobs", "retry", str(first))
    assert (retried.returncode, retried.stdout.strip()) == (0, "retried 1 job")
    assert _states(sql)[first] == "available"
    partly = cli("jobs", "cancel", str(first), "999999", str(second), "--json")
    assert partly.returncode == 1  # one id was not found, one job was already finished
    assert json.loads(partly.stdout) == {
        "action": "cancel", "count": 1, "ids": [first], "missed": [999999, second]
    }  # fmt: skip
    assert "no job 999999" in partly.stderr and "already discarded" in partly.stderr
    deleted = cli("jobs", "delete", str(first), str(second))
    assert deleted.returncode == 0 and deleted.stdout.strip() == "deleted 2 jobs"
    assert first not in _states(sql) and second not in _states(sql)


def test_bulk_actions_by_filter(cli: Any, jobs: dict[str, list[int]], sql: Sql) -> None:
    retried = cli("jobs", "retry", "--state", "discarded", "--worker", mailer.name, "--yes")
    assert (retried.returncode, retried.stdout.strip()) == (0, "retried 2 jobs")
    states = _states(sql)
    assert {states[i] for i in jobs["discarded"]} == {"available"}
    assert states[jobs["completed"][0]] == "completed"
    cancelled = cli("jobs", "cancel", "--queue", "media", "--yes")
    assert cancelled.stdout.strip() == "cancelled 4 jobs"
    deleted = cli("jobs", "delete", "--state", "cancelled", "--json", "--yes")
    assert json.loads(deleted.stdout) == {"action": "delete", "count": 4}
    assert set(_states(sql)) == {*jobs["mail_available"], *jobs["discarded"], *jobs["completed"]}


def _table(output: str, queue: str) -> list[str]:
    """The first row of `queue` in a plain table, split into cells."""
    return next(line.split() for line in output.splitlines() if line.split()[:1] == [queue])


def test_queues_and_top_show_nodes_waiting_jobs_and_throughput(
    cli: Any, client: Kerrera, start_node: Callable[..., Node]
) -> None:
    client.sync.insert_all([counted.new({}, schedule_in=3600) for _ in range(3)])
    client.sync.insert_all([thumbs.new({}) for _ in range(2)])
    start_node(name="n1", queues="default:2")
    listing = cli("queues")
    assert listing.returncode == 0, listing.stderr
    #                                    QUEUE   NODE  LIMIT RUNNING AVAIL SCHED RETRY PAUSED
    assert _table(listing.stdout, "default") == ["default", "n1", "2", "0", "0", "3", "0", "no"]
    assert _table(listing.stdout, "media") == ["media", "(none)", "-", "-", "2", "0", "0", "-"]
    rows = json.loads(cli("queues", "--json").stdout)
    default = next(r for r in rows if r["queue"] == "default")
    assert (default["node"], default["limit"], default["paused"], default["scheduled"]) == (
        "n1", 2, False, 3,
    )  # fmt: skip
    assert {(r["queue"], r["node"], r["available"]) for r in rows if r["queue"] == "media"} == {
        ("media", None, 2)
    }
    # About fifteen seconds of work: the node is still busy during top's interval, however
    # slowly top starts on a loaded machine (the node is killed at the end of the test).
    client.sync.insert_all([counted.new({"seconds": 0.03}) for _ in range(1000)])
    top = cli("top", "--once", "--interval", "0.5")
    assert top.returncode == 0, top.stderr
    assert "\x1b[" not in top.stdout and "jobs/s done" in top.stdout
    row = _table(top.stdout, "default")  # QUEUE NODES LIMIT RUNNING ... DONE/S FAILED/S
    assert row[1:3] == ["1", "2"] and float(row[8]) > 0 and float(row[9]) == 0
    assert _table(top.stdout, "media")[1:3] == ["0", "-"]


def test_top_refreshes_until_interrupted(cli: Any, client: Kerrera, dsn: str, prefix: str) -> None:
    client.sync.migrate()
    two = cli("top", "--iterations", "2", "--interval", "0.1")
    assert two.returncode == 0 and two.stdout.count("kerrera top") == 2
    top = Node(["top", "--interval", "0.1", "--dsn", dsn, "--prefix", prefix])
    try:
        until(lambda: top.stdout.count("kerrera top") >= 2)
        top.signal(signal.SIGINT)
        assert top.wait(timeout=10) == 0
        assert "Traceback" not in top.stderr
    finally:
        top.kill()


def _on_terminal(args: list[str], **env: str) -> str:
    """Run `kerrera ARGS` with its stdout on a pseudo-terminal; what it wrote there."""
    main, child = pty.openpty()
    with subprocess.Popen(
        [KERRERA, *args], stdin=subprocess.DEVNULL, stdout=child, stderr=subprocess.PIPE,
        env=_env(COLUMNS="160", **env),
    ) as proc:  # fmt: skip
        os.close(child)
        chunks = []
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: the child side is closed
                break
            if not data:
                break
            chunks.append(data)
        os.close(main)
        errors = proc.stderr.read() if proc.stderr else b""
        assert proc.wait(timeout=30) == 0, errors
    return b"".join(chunks).decode()


def test_a_terminal_gets_colour_unless_no_color(
    jobs: dict[str, list[int]], dsn: str, prefix: str
) -> None:
    args = ["jobs", "list", "--dsn", dsn, "--prefix", prefix]
    coloured = _on_terminal(args)
    assert COLOUR.search(coloured) and "discarded" in coloured
    plain = _on_terminal(args, NO_COLOR="1")
    assert not COLOUR.search(plain) and "discarded" in plain
