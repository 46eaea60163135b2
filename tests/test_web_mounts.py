"""The dashboard mounted under a prefix in a Django ASGI application (a Starlette router
in front of Django, as docs/web-dashboard.md shows), served by a real uvicorn process:
Django answers its own paths, the dashboard its prefix, with links, the form token
cookie and actions all under the prefix. (The FastAPI mount is driven in a browser by
tests/browser/test_web_pages.py.)"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("jinja2")
pytest.importorskip("django")

from kerrera import Kerrera
from kerrera.core.job import Job

REPO = Path(__file__).resolve().parents[1]
LISTENING = re.compile(r"Uvicorn running on (http://[\d.]+:\d+)")


def hello(request: Any) -> Any:
    """Django's own view at `/`."""
    from django.http import HttpResponse

    return HttpResponse("django here")


def django_app() -> Any:
    """`uvicorn --factory test_web_mounts:django_app`: Django at /, the dashboard at
    /kerrera (settings made here: the test needs no Django project)."""
    import django
    from django.conf import settings

    settings.configure(
        SECRET_KEY="test", ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, INSTALLED_APPS=[]
    )
    django.setup()
    from django.core.asgi import get_asgi_application
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from kerrera.web import kerrera_web

    web = kerrera_web(dsn=os.environ["KERRERA_DATABASE_URL"], prefix=os.environ["KERRERA_PREFIX"])
    return Starlette(routes=[Mount("/kerrera", web), Mount("/", get_asgi_application())])


def __getattr__(name: str) -> Any:
    """`urlpatterns`, made when Django asks (this module is its URLconf), after setup."""
    if name == "urlpatterns":
        from django.urls import path

        return [path("", hello)]
    raise AttributeError(name)


@pytest.fixture
def served(dsn: str, prefix: str) -> Iterator[str]:
    app = Kerrera(dsn, prefix=prefix).sync
    try:
        app.migrate()
        app.insert(Job(queue="mail", worker="app.Mailer", args={"to": "a@example.com"}))
    finally:
        app.close()
    env = {**os.environ, "KERRERA_DATABASE_URL": dsn, "KERRERA_PREFIX": prefix,
           "PYTHONPATH": str(REPO / "tests")}  # fmt: skip
    with subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "test_web_mounts:django_app", "--factory",
         "--host", "127.0.0.1", "--port", "0"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    ) as proc:  # fmt: skip
        assert proc.stdout is not None
        log = []
        for line in proc.stdout:
            log.append(line)
            if found := LISTENING.search(line):
                yield found.group(1)
                break
        else:
            raise AssertionError("the server did not start:\n" + "".join(log))
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)


def test_the_dashboard_mounted_in_django_asgi(served: str, sql: Any) -> None:
    with httpx.Client(base_url=served) as client:
        assert client.get("/").text == "django here"
        page = client.get("/kerrera/jobs")
        assert page.status_code == 200
        assert 'href="/kerrera/jobs/1"' in page.text
        assert 'src="/kerrera/static/kerrera.js"' in page.text
        assert client.get("/kerrera/static/kerrera.css").status_code == 200
        cookie = page.headers["set-cookie"]
        assert "Path=/kerrera" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token
        done = client.post(
            "/kerrera/jobs/1/actions",
            data={"csrf_token": token.group(1), "action": "cancel"},
            headers={"sec-fetch-site": "same-origin"},
        )
        assert done.status_code == 303 and done.headers["location"] == "/kerrera/jobs/1"
    assert sql("SELECT state::text FROM oban_jobs WHERE id = 1") == [("cancelled",)]
