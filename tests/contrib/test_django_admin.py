"""The jobs admin, through Django's test client as a logged-in user, on a real PostgreSQL.

Jobs are inserted with Kerrera in the test's own schema (the admin must follow
`KERRERA["prefix"]`) and put in the states a test needs with SQL; the actions must go
through Kerrera's guarded statements (an executing job is never retried or deleted).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import djsite
import pytest
from django.test import Client

# The fixtures every Django test module shares (Django itself is set up once).
django_site = djsite.django_site
kerrera_settings = djsite.kerrera_settings

SQL = Callable[..., list[tuple[Any, ...]]]
CHANGELIST = "/admin/kerrera/job/"

pytestmark = pytest.mark.usefixtures("kerrera_settings")


@pytest.fixture
def admin_client() -> Client:
    from django.contrib.auth.models import User

    user = User.objects.create_superuser(f"admin-{uuid.uuid4().hex[:8]}", password="x")
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def jobs(sql: SQL) -> dict[str, int]:
    """Five jobs: name -> id, in the state the name says (two queues, two workers)."""
    from orders.workers import send_confirmation, send_reminder

    from kerrera.contrib.django import get_app

    app = get_app().sync
    made = {
        "available": app.insert(send_confirmation.new({"order_id": 1})),
        "discarded": app.insert(send_confirmation.new({"order_id": 2})),
        "executing": app.insert(send_reminder.new({"order_id": 3})),
        "completed": app.insert(send_reminder.new({"order_id": 4}, queue="default")),
        "scheduled": app.insert(send_confirmation.new({"order_id": 5}, schedule_in=3600)),
    }
    ids = {name: int(job.id or 0) for name, job in made.items()}
    sql(
        "UPDATE oban_jobs SET state = 'discarded', attempt = 5, discarded_at = now(),"
        " errors = ARRAY[jsonb_build_object('attempt', 5, 'at', now(), 'error',"
        " 'LookupError: no such mailbox')] WHERE id = %s",
        [ids["discarded"]],
    )
    sql(
        "UPDATE oban_jobs SET state = 'executing', attempt = 1, attempted_at = now(),"
        " attempted_by = ARRAY['node-a', 'p1'] WHERE id = %s",
        [ids["executing"]],
    )
    sql(
        "UPDATE oban_jobs SET state = 'completed', attempt = 1, completed_at = now() WHERE id = %s",
        [ids["completed"]],
    )
    return ids


def _listed(response: Any) -> list[int]:
    return [job.id for job in response.context["cl"].result_list]


def _states(sql: SQL, *ids: int) -> list[str]:
    rows = sql("SELECT state FROM oban_jobs WHERE id = ANY(%s) ORDER BY id", [list(ids)])
    return [row[0] for row in rows]


def test_the_changelist_lists_the_jobs_of_the_configured_schema(
    admin_client: Client, jobs: dict[str, int]
) -> None:
    page = admin_client.get(CHANGELIST)
    assert page.status_code == 200
    assert _listed(page) == sorted(jobs.values(), reverse=True)
    html = page.content.decode()
    for column in ("state", "queue", "worker", "attempt", "scheduled at", "attempted at"):
        assert f">{column.capitalize()}</a>" in html  # a sortable column header
    assert "orders.workers.send_confirmation" in html
    assert "5/5" in html  # the discarded job's attempts of its maximum


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("state__exact=discarded", ["discarded"]),
        ("state__exact=scheduled", ["scheduled"]),
        ("queue=default", ["completed"]),
        ("worker=orders.workers.send_reminder", ["completed", "executing"]),
        ("q=send_rem", ["completed", "executing"]),
    ],
)
def test_the_changelist_filters_and_searches(
    admin_client: Client, jobs: dict[str, int], query: str, expected: list[str]
) -> None:
    page = admin_client.get(f"{CHANGELIST}?{query}")
    assert page.status_code == 200, page.content[:500]
    assert _listed(page) == sorted((jobs[name] for name in expected), reverse=True)


def test_a_job_id_finds_that_job(admin_client: Client, jobs: dict[str, int]) -> None:
    page = admin_client.get(CHANGELIST, {"q": str(jobs["executing"])})
    assert _listed(page) == [jobs["executing"]]
    assert _listed(admin_client.get(CHANGELIST, {"q": "9" * 30})) == []


def test_the_filters_offer_each_state_queue_and_worker(
    admin_client: Client, jobs: dict[str, int]
) -> None:
    html = admin_client.get(CHANGELIST).content.decode()
    for link in ("?state__exact=retryable", "?queue=mail", "?worker=orders.workers.send_reminder"):
        assert link in html


def _act(client: Client, action: str, *ids: int) -> Any:
    data = {"action": action, "_selected_action": [str(i) for i in ids]}
    return client.post(CHANGELIST, data, follow=True)


def test_the_retry_action_retries_a_discarded_job_and_leaves_a_running_one(
    admin_client: Client, jobs: dict[str, int], sql: SQL
) -> None:
    done = _act(admin_client, "retry_jobs", jobs["discarded"], jobs["executing"])
    assert done.status_code == 200
    said = [str(m) for m in done.context["messages"]]
    assert said == ["1 of 2 jobs retried.", "1 job was not retried (executing, or gone)."]
    assert _states(sql, jobs["discarded"], jobs["executing"]) == ["available", "executing"]
    # A spent job gets one more attempt, as `kerrera jobs retry` gives it.
    assert sql("SELECT max_attempts FROM oban_jobs WHERE id = %s", [jobs["discarded"]]) == [(6,)]


def test_the_cancel_action_cancels_unfinished_jobs_only(
    admin_client: Client, jobs: dict[str, int], sql: SQL
) -> None:
    done = _act(admin_client, "cancel_jobs", jobs["scheduled"], jobs["completed"])
    said = [str(m) for m in done.context["messages"]]
    assert said == [
        "1 of 2 jobs cancelled.",
        "1 job was not cancelled (already finished, or gone).",
    ]
    assert _states(sql, jobs["completed"], jobs["scheduled"]) == ["completed", "cancelled"]


def test_the_delete_action_spares_executing_jobs(
    admin_client: Client, jobs: dict[str, int], sql: SQL
) -> None:
    done = _act(admin_client, "delete_jobs", jobs["completed"], jobs["executing"])
    said = [str(m) for m in done.context["messages"]]
    assert said == ["1 of 2 jobs deleted.", "1 job was not deleted (executing, or gone)."]
    assert _states(sql, jobs["completed"], jobs["executing"]) == ["executing"]


def test_jobs_are_read_only_and_djangos_bulk_delete_is_not_offered(
    admin_client: Client, jobs: dict[str, int]
) -> None:
    page = admin_client.get(f"{CHANGELIST}{jobs['discarded']}/change/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "LookupError: no such mailbox" in html  # the errors, read through Kerrera
    assert 'name="args"' not in html and 'type="submit"' not in html.split("<form")[-1]
    assert admin_client.get(f"{CHANGELIST}add/").status_code == 403
    assert admin_client.get(f"{CHANGELIST}{jobs['discarded']}/delete/").status_code == 403
    actions = admin_client.get(CHANGELIST).context["action_form"].fields["action"].choices
    assert [name for name, _ in actions if name] == ["retry_jobs", "cancel_jobs", "delete_jobs"]


def test_a_user_who_may_only_view_gets_no_actions(jobs: dict[str, int], sql: SQL) -> None:
    from django.contrib.auth.models import Permission, User

    viewer = User.objects.create_user(f"viewer-{uuid.uuid4().hex[:8]}", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_job"))
    client = Client()
    client.force_login(viewer)
    page = client.get(CHANGELIST)
    assert page.status_code == 200
    assert page.context["action_form"] is None or not [
        name for name, _ in page.context["action_form"].fields["action"].choices if name
    ]
    refused = _act(client, "retry_jobs", jobs["discarded"])
    assert _states(sql, jobs["discarded"]) == ["discarded"]
    assert refused.status_code == 200
