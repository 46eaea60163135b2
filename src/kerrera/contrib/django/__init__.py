"""Kerrera for Django: settings, inserting jobs inside `transaction.atomic()`,
`manage.py kerrera migrate|start`, a jobs admin (`kerrera.contrib.django.admin`, with
`django.contrib.admin` installed) and a backend of Django 6's Tasks framework
(`kerrera.contrib.django.tasks.KerreraBackend`).

Add `"kerrera.contrib.django"` to `INSTALLED_APPS` and, optionally, a `KERRERA` dict of
Kerrera options to settings (the database defaults to `DATABASES["default"]`). Jobs are
inserted on Django's own connection, so they commit or roll back with the transaction
they were inserted in. See docs/django.md.

Example:
    from django.db import transaction
    from kerrera.contrib.django import insert

    with transaction.atomic():
        order = Order.objects.create(item="tea")
        insert(send_confirmation.new({"order_id": order.pk}))
"""

from __future__ import annotations

from kerrera.contrib.django.conf import KerreraSettings, build_app, database_dsn
from kerrera.contrib.django.shared import (
    ainsert,
    ainsert_all,
    get_app,
    insert,
    insert_all,
    reset_app,
    set_app,
)
from kerrera.contrib.django.workers import worker

__all__ = [
    "KerreraSettings",
    "ainsert",
    "ainsert_all",
    "build_app",
    "database_dsn",
    "get_app",
    "insert",
    "insert_all",
    "reset_app",
    "set_app",
    "worker",
]
