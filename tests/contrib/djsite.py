"""Django configured for the Django tests, once per process, against the test database.

The example project's `orders` app, Django's auth, sessions and admin tables live in a
schema of their own (`MODELS_SCHEMA`, dropped at the end of the session); Kerrera's
tables in each test's `prefix` schema (`KERRERA = {"prefix": prefix}`). `TASKS` names
Kerrera's backend (read by Django >= 6.0 only).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "django_project"
#: The example app's tables (and Django's own), in this process and in its subprocesses.
MODELS_SCHEMA = f"dj_{uuid.uuid4().hex[:10]}"

TASKS = {
    "default": {
        "BACKEND": "kerrera.contrib.django.tasks.KerreraBackend",
        "QUEUES": ["default", "mail"],
        "OPTIONS": {"max_attempts": 1},
    },
    "patient": {
        "BACKEND": "kerrera.contrib.django.tasks.KerreraBackend",
        "QUEUES": [],  # any queue
    },
}


def database(dsn: str, **options: Any) -> dict[str, Any]:
    """A `DATABASES` entry for `dsn` whose search path is `MODELS_SCHEMA`."""
    params = conninfo_to_dict(dsn)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": params.get("dbname", ""),
        "USER": params.get("user", ""),
        "PASSWORD": params.get("password", ""),
        "HOST": params.get("host", ""),
        "PORT": params.get("port", ""),
        "OPTIONS": {"options": f"-c search_path={MODELS_SCHEMA}", **options},
    }


_configured: list[bool] = []  # [True] once `configure` has run in this process


def configure(dsn: str) -> None:
    """`settings.configure(...)` and `django.setup()` for these tests."""
    import django
    from django.conf import settings

    _configured.append(True)

    sys.path.insert(0, str(EXAMPLE))
    settings.configure(
        DATABASES={
            "default": database(dsn),
            "tuned": database(dsn, sslmode="disable", pool=False, server_side_binding=False),
            "other": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
        },
        INSTALLED_APPS=[
            "django.contrib.admin",
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "django.contrib.messages",
            "kerrera.contrib.django",
            "orders",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.contrib.messages.middleware.MessageMiddleware",
        ],
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "APP_DIRS": True,
                "OPTIONS": {
                    "context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                        "django.contrib.messages.context_processors.messages",
                    ]
                },
            }
        ],
        TASKS=TASKS,
        ROOT_URLCONF="djsite_urls",
        ALLOWED_HOSTS=["testserver"],
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
        SECRET_KEY="test",
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
    )
    django.setup()


# -- fixtures (imported by each Django test module) ---------------------------------------


@pytest.fixture(scope="session")
def django_site(dsn: str) -> Iterator[None]:
    """Django set up once for the session, its tables and the example's created.

    Each Django test module imports this fixture, so pytest may call it once per
    module: the first call sets Django up (and tears it down at the session's end), the
    others find it done.
    """
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections
    from django.test.utils import setup_test_environment, teardown_test_environment

    if _configured:
        yield
        return
    if settings.configured:  # these tests need their own settings: never skip them silently
        pytest.fail("Django was configured before the Django tests (by another test module?)")
    configure(dsn)
    setup_test_environment()  # so that the test client records templates' contexts
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{MODELS_SCHEMA}"')
    call_command("migrate", verbosity=0, interactive=False)
    yield
    teardown_test_environment()
    connections.close_all()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{MODELS_SCHEMA}" CASCADE')
    sys.path.remove(str(EXAMPLE))


@pytest.fixture
def kerrera_settings(django_site: None, prefix: str) -> Iterator[None]:
    """`KERRERA = {"prefix": prefix}` for one test; the shared app is forgotten after."""
    from django.test import override_settings

    from kerrera.contrib.django import reset_app

    with override_settings(KERRERA={"prefix": prefix}):
        yield
    reset_app()


# -- the example project in subprocesses ------------------------------------------------


def example_env(dsn: str, prefix: str, **extra: str) -> dict[str, str]:
    """The environment of the example project's `manage.py` on the test schemas."""
    params = {**conninfo_to_dict(dsn), "options": f"-c search_path={MODELS_SCHEMA}"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "KERRERA_"))}
    env.pop("DATABASE_URL", None)
    return {**env, "DATABASE_URL": make_conninfo(**params), "KERRERA_PREFIX": prefix, **extra}


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the example's `manage.py` to its end."""
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=EXAMPLE, env=env, capture_output=True,
        text=True, timeout=90, check=False,
    )  # fmt: skip


class Started:
    """A `manage.py` process whose combined output is collected line by line."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", *args], cwd=EXAMPLE, env=env, text=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        self.lines.extend(line.rstrip("\n") for line in self.proc.stdout)

    def saw(self, text: str) -> bool:
        seen = any(text in line for line in list(self.lines))
        if not seen and self.proc.poll() is not None and not self._reader.is_alive():
            raise AssertionError("exited early:\n" + "\n".join(self.lines))
        return seen

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(30)
        self._reader.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code
