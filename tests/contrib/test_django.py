"""The Django integration with a real Django and a real PostgreSQL.

Django is configured in this process against the test database (see `djsite`): the
example project's `orders` app lives in a schema of its own, and Kerrera's tables in
each test's `prefix` schema. The example project also runs for real in subprocesses:
`manage.py kerrera migrate|start`, and its own `manage.py test` suite.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import djsite
import psycopg
import pytest
from acceptance.nodes import until
from django.core.exceptions import ImproperlyConfigured, SynchronousOnlyOperation
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError
from django.db import connections, transaction
from django.test import Client, override_settings
from djsite import MODELS_SCHEMA, Started, example_env, manage
from psycopg.conninfo import conninfo_to_dict

from kerrera import ConfigError

# The fixtures every Django test module shares (Django itself is set up once).
django_site = djsite.django_site
kerrera_settings = djsite.kerrera_settings

SQL = Callable[..., list[tuple[Any, ...]]]

pytestmark = pytest.mark.usefixtures("kerrera_settings")


def _jobs(sql: SQL, job_id: int | None) -> list[tuple[Any, ...]]:
    return sql("SELECT state, worker, args FROM oban_jobs WHERE id = %s", [job_id])


# -- inserting on Django's connection ---------------------------------------------------


def test_a_job_inserted_in_a_rolled_back_atomic_block_is_never_saved(sql: SQL) -> None:
    from orders.models import Order
    from orders.workers import send_confirmation

    from kerrera.contrib.django import insert

    with pytest.raises(RuntimeError, match="payment declined"), transaction.atomic():
        order = Order.objects.create(item="tea", quantity=1)
        job = insert(send_confirmation.new({"order_id": order.pk}))
        assert job.id is not None
        raise RuntimeError("payment declined")
    assert _jobs(sql, job.id) == []
    assert not Order.objects.filter(pk=order.pk).exists()


def test_a_job_inserted_in_an_atomic_block_commits_with_it(sql: SQL) -> None:
    from orders.models import Order
    from orders.workers import send_confirmation

    from kerrera.contrib.django import insert

    with transaction.atomic():
        order = Order.objects.create(item="tea", quantity=1)
        job = insert(send_confirmation.new({"order_id": order.pk}))
        assert _jobs(sql, job.id) == []  # another connection: not committed yet
    assert _jobs(sql, job.id) == [("available", send_confirmation.name, {"order_id": order.pk})]


def test_outside_a_transaction_inserts_are_committed_at_once(sql: SQL) -> None:
    from orders.workers import send_confirmation, send_reminder

    from kerrera.contrib.django import insert_all

    jobs = insert_all([send_confirmation.new({"order_id": 1}), send_reminder.new({"n": 2})])
    assert [row[1] for j in jobs for row in _jobs(sql, j.id)] == [
        send_confirmation.name,
        send_reminder.name,
    ]


def test_unique_jobs_insert_once_on_djangos_connection() -> None:
    # Django reads jsonb as text on its connections; the unique path reads jobs back.
    from orders.workers import send_confirmation

    from kerrera.contrib.django import insert

    with transaction.atomic():
        first = insert(send_confirmation.new({"order_id": 9}, unique=True))
        again = insert(send_confirmation.new({"order_id": 9}, unique=True))
    assert again.id == first.id
    assert again.args == {"order_id": 9}


async def test_ainsert_runs_on_djangos_connection_thread(sql: SQL) -> None:
    from asgiref.sync import sync_to_async
    from orders.workers import send_reminder

    from kerrera.contrib.django import ainsert, insert

    with pytest.raises(SynchronousOnlyOperation):
        insert(send_reminder.new({"order_id": 1}))  # Django refuses this in a loop
    job = await ainsert(send_reminder.new({"order_id": 1}))
    assert _jobs(sql, job.id) == [("available", send_reminder.name, {"order_id": 1})]
    await sync_to_async(connections.close_all, thread_sensitive=True)()


def test_an_insert_after_an_error_in_the_block_is_refused() -> None:
    from django.db import IntegrityError
    from django.db.transaction import TransactionManagementError
    from orders.models import Order
    from orders.workers import send_confirmation

    from kerrera.contrib.django import insert

    with transaction.atomic():
        # No savepoint: the failed statement leaves the whole block to be rolled back.
        with pytest.raises(IntegrityError), transaction.atomic(savepoint=False):
            Order.objects.create(item="tea", quantity=-1)  # violates the CHECK constraint
        with pytest.raises(TransactionManagementError, match="end of the 'atomic' block"):
            insert(send_confirmation.new({"order_id": 1}))


def test_psycopg2_connections_are_refused_with_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from orders.workers import send_confirmation

    from kerrera.contrib.django import insert

    class Psycopg2Connection:
        __module__ = "psycopg2.extensions"

    wrapper = connections["default"]
    wrapper.ensure_connection()
    monkeypatch.setattr(wrapper, "connection", Psycopg2Connection())
    with pytest.raises(ImproperlyConfigured, match="needs psycopg 3, but Django is using psycopg2"):
        insert(send_confirmation.new({"order_id": 1}))


def test_the_view_commits_order_and_job_or_neither(sql: SQL) -> None:
    from orders.models import Order

    client = Client()
    placed = client.post("/orders/", {"item": "tea", "quantity": 2})
    assert placed.status_code == 201
    assert _jobs(sql, placed.json()["job"])[0][0] == "available"
    count = sql("SELECT count(*) FROM oban_jobs")
    refused = client.post("/orders/", {"item": "tea", "quantity": 99})
    assert refused.status_code == 409
    assert sql("SELECT count(*) FROM oban_jobs") == count
    assert not Order.objects.filter(quantity=99).exists()


# -- settings -------------------------------------------------------------------------


def test_the_dsn_follows_djangos_database_settings(dsn: str) -> None:
    from kerrera.contrib.django import database_dsn, get_app

    built = conninfo_to_dict(database_dsn("tuned"))
    fields = ("dbname", "user", "password", "host", "port")
    expected = {k: v for k, v in conninfo_to_dict(dsn).items() if v and k in fields}
    assert built == {**expected, "sslmode": "disable", "options": f"-c search_path={MODELS_SCHEMA}"}
    assert conninfo_to_dict(get_app().dsn) == conninfo_to_dict(database_dsn("default"))


def test_settings_options_reach_the_app(prefix: str) -> None:
    from kerrera.contrib.django import build_app, get_app

    with override_settings(KERRERA={"prefix": prefix, "queues": {"mail": 3}, "pool_size": 2}):
        app = get_app()
        assert (app.config.prefix, dict(app.config.queues), app.config.pool_size) == (
            prefix,
            {"mail": 3},
            2,
        )
        assert get_app() is app
        assert dict(build_app(queues={"x": 1}).config.queues) == {"x": 1}
    assert get_app() is not app  # override_settings ended: rebuilt from the new settings


@pytest.mark.parametrize(
    ("kerrera", "error", "message"),
    [
        ({"queus": {"default": 1}}, ConfigError, "unknown option 'queus', did you mean 'queues'?"),
        ({"module": ["x"]}, ConfigError, "unknown option 'module', did you mean 'modules'?"),
        ({"queues": {"default": 0}}, ConfigError, r"settings.KERRERA: option 'queues'"),
        ({"modules": [1]}, ConfigError, "option 'modules' must be a list of module names"),
        ({"database": "other"}, ImproperlyConfigured, r"DATABASES\['other'\] uses ENGINE "),
        ({"database": "nope"}, ImproperlyConfigured, "'nope', which is not in settings.DATABASES"),
        (["queues"], ImproperlyConfigured, "settings.KERRERA must be a dict"),
    ],
)
def test_bad_settings_are_clear_errors(
    prefix: str, kerrera: Any, error: type[Exception], message: str
) -> None:
    from kerrera.contrib.django import get_app

    value = {"prefix": prefix, **kerrera} if isinstance(kerrera, dict) else kerrera
    with override_settings(KERRERA=value):
        with pytest.raises(error, match=message):
            get_app()
        with pytest.raises(SystemCheckError, match=r"kerrera\.E001") as checked:
            call_command("check")
        assert checked.match(message)
        with pytest.raises(CommandError, match=message):
            call_command("kerrera", "migrate", "--status")


def test_the_django_worker_keeps_its_name_and_flavour() -> None:
    from orders.workers import send_confirmation, send_reminder

    assert send_confirmation.name == "orders.workers.send_confirmation"
    assert (send_confirmation.is_async, send_reminder.is_async) == (False, True)
    assert send_confirmation.options.queue == "mail"


# -- the example project in subprocesses ------------------------------------------------


def test_manage_py_kerrera_migrates_and_runs_the_views_job(dsn: str, prefix: str, sql: SQL) -> None:
    from orders.models import Order

    from kerrera.engine.migrations import LATEST_VERSION

    env = example_env(dsn, prefix)
    status = manage(env, "kerrera", "migrate", "--status")
    assert status.returncode == 0, status.stderr
    assert status.stdout.strip() == f"version 0 (latest {LATEST_VERSION})"
    applied = manage(env, "kerrera", "migrate")
    assert f"now at version {LATEST_VERSION}" in applied.stdout, applied.stderr

    placed = Client().post("/orders/", {"item": "coffee", "quantity": 1}).json()
    node = Started(env, "kerrera", "start", "-v", "2", "--node", "django-example")
    try:
        until(lambda: node.saw("running queues {'default': 5, 'mail': 2}"), timeout=30)
        until(lambda: _jobs(sql, placed["job"])[0][0] == "completed", timeout=30)
    finally:
        code = node.stop()
    assert code == 0, "\n".join(node.lines)
    assert node.saw("kerrera: stopped")
    assert Order.objects.get(pk=placed["order"]).status == "confirmed"
    assert sql("SELECT attempted_by[1] FROM oban_jobs WHERE id = %s", [placed["job"]]) == [
        ("django-example",)
    ]


def test_manage_py_kerrera_reports_bad_arguments(dsn: str, prefix: str) -> None:
    env = example_env(dsn, prefix)
    down = manage(env, "kerrera", "migrate", "--down", "0")
    assert down.returncode != 0
    assert "option '--down' must be a number of steps >= 1" in down.stderr
    queues = manage(env, "kerrera", "start", "--queues", "mail:lots")
    assert queues.returncode != 0
    assert "bad limit in 'mail:lots'" in queues.stderr
    module = manage(env, "kerrera", "start", "--module", "orders.nowhere")
    assert "cannot import worker module 'orders.nowhere'" in module.stderr


def test_the_example_projects_own_tests_pass(dsn: str, prefix: str) -> None:
    test_db = f"test_kerrera_example_{uuid.uuid4().hex[:8]}"
    env = example_env(dsn, prefix, DJANGO_TEST_DATABASE=test_db)
    env["DATABASE_URL"] = dsn  # the test database gets the tables in its default schema
    result = manage(env, "test", "--noinput")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stderr.splitlines()
    with psycopg.connect(dsn, autocommit=True) as conn:
        left = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [test_db])
        assert left.fetchall() == [], "the test database was not dropped"
