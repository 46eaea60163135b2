"""The dashboard in a real browser (headless Chromium driven by `web_pages.mjs`), served
by real processes on random ports: `kerrera web` standalone, `kerrera web --basic-auth
--access read_only`, and a FastAPI application that mounts it under /kerrera.

Checked as an operator would meet them: a job inserted by another process appears
without a reload; markup in args stays inert; search; a bulk retry through its dry run;
a cross-site form post is refused; a read-only user sees no action and gets 403 on a
POST. Screenshots of the main pages, light and dark, land in SHOTS."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from acceptance.nodes import KERRERA

from browser.test_sse_page import CHROMIUM, _missing
from kerrera import Kerrera
from kerrera.core.job import Job
from kerrera.core.workflow import Workflow

HERE = Path(__file__).parent
REPO = HERE.parents[1]
SHOTS = Path(os.environ.get("KERRERA_WEB_SHOTS", "/tmp/kerrera-web-shots"))
LISTENING = re.compile(r"Uvicorn running on (http://[\d.]+:\d+)")
XSS = '<script>window.kerreraXss = 1</script><img src=x onerror="window.kerreraXss = 1">'


def mount_app() -> Any:
    """The FastAPI application of the mounted runs (`uvicorn --factory`): Kerrera started
    by the host's lifespan, the dashboard under /kerrera, a route of the host's own."""
    from fastapi import FastAPI

    from kerrera.contrib.starlette import kerrera_lifespan
    from kerrera.web import kerrera_web

    app = Kerrera(
        os.environ["KERRERA_DATABASE_URL"], prefix=os.environ["KERRERA_PREFIX"], migrate=False
    )
    api = FastAPI(lifespan=kerrera_lifespan(app))
    api.mount("/kerrera", kerrera_web(app))

    @api.get("/")
    def home() -> dict[str, str]:
        return {"app": "host"}

    return api


@contextmanager
def serving(command: list[str], env: dict[str, str]) -> Iterator[str]:
    """Run a server process; yield its base URL once it listens; stop it with SIGTERM."""
    full_env = {**os.environ, **env, "PYTHONPATH": str(REPO / "tests")}
    full_env.pop("DATABASE_URL", None)
    proc = subprocess.Popen(
        command, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    log: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.append(line)
            if found := LISTENING.search(line):
                yield found.group(1)
                break
        else:
            raise AssertionError("the server did not start:\n" + "".join(log))
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        log.append(out or "")
        if proc.stdout is not None:
            proc.stdout.close()
        print("".join(log)[-3000:])
    assert "Application shutdown complete" in "".join(log)


def drive(
    url: str, mode: str, dsn: str, prefix: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run web_pages.mjs; answer its requests (insert a job from this process)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    with subprocess.Popen(
        ["node", str(HERE / "web_pages.mjs"), url, mode, str(SHOTS)],
        cwd=HERE,
        env={**os.environ, "CHROMIUM": CHROMIUM, **(env or {})},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as node:
        result, errors = _converse(node, dsn, prefix)
    assert node.returncode == 0, errors
    print(mode, json.dumps(result, indent=1))
    return result


def _converse(node: subprocess.Popen[str], dsn: str, prefix: str) -> tuple[dict[str, Any], str]:
    """Answer the script until it ends: (its result, its stderr)."""
    assert node.stdin is not None and node.stdout is not None and node.stderr is not None
    result: dict[str, Any] = {}
    try:
        for line in node.stdout:
            message = json.loads(line)
            if message.get("need") == "insert":
                app = Kerrera(dsn, prefix=prefix, migrate=False).sync
                try:
                    job = app.insert(Job(queue="media", worker="app.Live", args={"live": True}))
                finally:
                    app.close()
                node.stdin.write(f"{job.id}\n")
                node.stdin.flush()
            else:
                result = message
        node.wait(90)
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    return result, node.stderr.read()


@pytest.fixture
def seeded(dsn: str, prefix: str) -> str:
    """Jobs on the test schema: markup in one's args, mail and media ones, 3 discarded."""
    if reason := _missing():
        pytest.skip(reason)
    app = Kerrera(dsn, prefix=prefix).sync
    try:
        app.migrate()
        app.insert(Job(queue="mail", worker="app.Mailer", args={"to": XSS}))
        for i in range(3):
            app.insert(Job(queue="mail", worker="app.Mailer", args={"to": f"u{i}@example.com"}))
            app.insert(
                Job(queue="media", worker="app.Thumb", args={"user": {"id": i}}, tags=["vip"])
            )
        ids = [
            app.insert(Job(queue="media", worker="app.Export", args={"n": n})).id for n in range(3)
        ]
        flow = Workflow(name="track")
        flow.add("download", Job(queue="media", worker="app.Download"))
        flow.add_many("stems", [Job(queue="media", worker="app.Stem") for _ in range(2)],
                      deps=["download"])  # fmt: skip
        flow.add("analyse", Job(queue="media", worker="app.Analyse"), deps=["stems"])
        app.insert(flow)
    finally:
        app.close()
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{prefix}"')
        conn.execute(
            "UPDATE oban_jobs SET state = 'discarded', attempt = 1, discarded_at = now(), "
            "errors = ARRAY[jsonb_build_object('at', now(), 'attempt', 1, 'error', "
            "'Traceback (most recent call last):' || chr(10) || '  File \"/srv/app/export.py\", "
            "line 9, in perform' || chr(10) || '    raise OSError(\"disk full\")' || chr(10) || "
            "'OSError: disk full')] WHERE id = ANY(%s)",
            (ids,),
        )
        # The workflow's first step waits an hour (so the jobs lists stay as they were),
        # a minute of statistics for the charts, and a cron entry.
        conn.execute(
            "UPDATE oban_jobs SET state = 'scheduled', scheduled_at = now() + interval '1 hour' "
            "WHERE meta->>'name' = 'download'"
        )
        conn.execute(
            "INSERT INTO kerrera_job_stats SELECT 60, date_trunc('minute', "
            "timezone('UTC', now())) - interval '2 minutes', q, '', 40, 2, 0, 0, "
            "array_fill(0, ARRAY[20]) || 42 || array_fill(0, ARRAY[43]), "
            "array_fill(0, ARRAY[8]) || 42 || array_fill(0, ARRAY[55]) "
            "FROM unnest(ARRAY['', 'mail']) q"
        )
        conn.execute(
            "INSERT INTO kerrera_cron (name, last_tick) "
            "VALUES ('app.Report */15 9-17 * * MON-FRI', timezone('UTC', now()))"
        )
    return prefix


def check_full(checks: dict[str, Any], problems: list[str]) -> None:
    assert problems == []
    assert checks["status"] == "live"
    assert checks["xssText"] == 1 and checks["xssRan"] is False
    assert checks["liveRow"] is True and checks["noReload"] is True
    assert checks["hiddenStatus"] == "paused" and checks["reopened"] == 1
    assert "q=queues%3Amail" in checks["searchUrl"]
    assert checks["searchQueues"] == ["mail"] and checks["searchRows"] == 4
    assert "app.Mailer" in checks["detailTitle"]
    assert checks["errorGroups"] == ["OSError"]
    assert checks["dryRunTitle"] == "Retry 3 jobs?" and checks["dryRunSample"] == 3
    assert checks["flash"] == "Retried 3 job(s)."
    assert checks["discardedBefore"] == 3 and checks["discardedAfter"] == 0
    assert checks["crossSiteStatus"] == 403 and checks["stillThere"] is True
    assert checks["charts"] == 3 and checks["chartLines"] >= 1
    assert checks["workflowSteps"] == {
        "download": "scheduled", "stems.0": "suspended", "stems.1": "suspended",
        "analyse": "suspended",
    }  # fmt: skip
    assert checks["cronWords"] == "every 15 minutes from 09:00 to 17:59, Monday to Friday"


def test_the_standalone_dashboard_in_a_browser(dsn: str, seeded: str, start_node: Any) -> None:
    start_node(queues="reports:5", name="node-a")  # a queue with a node, paused from the page
    command = [str(KERRERA), "web", "--dsn", dsn, "--prefix", seeded, "--port", "0"]
    with serving(command, {}) as url:
        result = drive(url, "full", dsn, seeded)
    check_full(result["checks"], result["problems"])
    assert result["checks"]["darkBackground"] == "rgb(15, 19, 24)"
    assert result["checks"]["nodePaused"] == "node-a"


def test_the_dashboard_mounted_in_fastapi_in_a_browser(dsn: str, seeded: str) -> None:
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "browser.test_web_pages:mount_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
    ]
    env = {"KERRERA_DATABASE_URL": dsn, "KERRERA_PREFIX": seeded}
    with serving(command, env) as url:
        result = drive(f"{url}/kerrera", "full", dsn, seeded)
    check_full(result["checks"], result["problems"])


def test_a_read_only_user_in_a_browser_sees_no_action(dsn: str, seeded: str) -> None:
    command = [
        str(KERRERA),
        "web",
        "--dsn",
        dsn,
        "--prefix",
        seeded,
        "--port",
        "0",
        "--basic-auth",
        "--access",
        "read_only",
    ]
    secret = {"KERRERA_WEB_USER": "viewer", "KERRERA_WEB_PASSWORD": "pa55-word"}
    with serving(command, secret) as url:
        result = drive(
            url, "readonly", dsn, seeded, {"WEB_USER": "viewer", "WEB_PASSWORD": "pa55-word"}
        )
    checks = result["checks"]
    assert result["problems"] == []
    assert checks["rows"] == 7
    assert checks["actionButtons"] == 0 and checks["postForms"] == 0
    assert checks["jobActionButtons"] == 0
    assert checks["postStatus"] == 403
    assert checks["userLabel"] == "viewer · read only"
