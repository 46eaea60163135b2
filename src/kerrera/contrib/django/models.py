# mypy: disable-error-code="import-untyped"
"""`Job`: a read-only Django model of Kerrera's `oban_jobs` table, for the admin.

The model is unmanaged (Django never creates, migrates or drops the table: `manage.py
kerrera migrate` does) and follows `settings.KERRERA["prefix"]`, the schema of the
table. Read it with the ORM as you like; change jobs through Kerrera
(`get_app().sync.retry_job(...)`, `cancel_job`, `delete_job`), whose statements are
guarded (a running job is never deleted) and notify the nodes.

Example:
    from kerrera.contrib.django.models import Job

    Job.objects.filter(state="discarded", queue="mail").count()
"""

from __future__ import annotations

import inspect
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import models

from kerrera import JobState, Kerrera


class UTCDateTimeField(models.DateTimeField):  # type: ignore[misc]  # Django is untyped
    """A `timestamp without time zone` column holding UTC, as Oban writes them: read as
    aware UTC datetimes when `USE_TZ` is on, and compared in UTC."""

    def from_db_value(self, value: datetime | None, expression: Any, connection: Any) -> Any:
        """The stored naive UTC value, made aware when Django uses time zones."""
        if value is None or not settings.USE_TZ or value.tzinfo is not None:
            return value
        return value.replace(tzinfo=UTC)

    def get_db_prep_value(self, value: Any, connection: Any, prepared: bool = False) -> Any:
        """Aware datetimes go to the table as naive UTC."""
        value = super().get_db_prep_value(value, connection, prepared)
        if isinstance(value, datetime) and value.tzinfo is not None:
            return value.astimezone(UTC).replace(tzinfo=None)
        return value


class TextListField(models.Field):  # type: ignore[misc]  # Django is untyped
    """A `text[]` column, read as a list of strings (psycopg decodes arrays itself).

    Not `django.contrib.postgres`'s `ArrayField`, which would require that app to be
    installed for a field this model only reads.
    """

    def db_type(self, connection: Any) -> str:
        """The column's type."""
        return "text[]"


class Job(models.Model):  # type: ignore[misc]  # Django is untyped
    """One row of `oban_jobs` (the columns the admin shows; `errors` is read through
    Kerrera). Ordered newest first."""

    id = models.BigIntegerField(primary_key=True)
    state = models.CharField(max_length=16, choices=[(s.value, s.value) for s in JobState])
    queue = models.TextField()
    worker = models.TextField()
    args = models.JSONField()
    meta = models.JSONField()
    tags = TextListField()
    attempt = models.IntegerField()
    max_attempts = models.IntegerField()
    priority = models.IntegerField()
    inserted_at = UTCDateTimeField()
    scheduled_at = UTCDateTimeField()
    attempted_at = UTCDateTimeField(null=True)
    completed_at = UTCDateTimeField(null=True)
    discarded_at = UTCDateTimeField(null=True)
    cancelled_at = UTCDateTimeField(null=True)
    attempted_by = TextListField(null=True)

    class Meta:
        managed = False
        app_label = "kerrera"
        db_table = "oban_jobs"  # schema-qualified by follow_prefix()
        ordering = ("-id",)
        verbose_name = "job"
        verbose_name_plural = "jobs"

    def __str__(self) -> str:
        return f"job {self.id} ({self.worker}, {self.state})"


def follow_prefix() -> str:
    """Point `Job` at `oban_jobs` in the schema `settings.KERRERA["prefix"]` names (the
    same default as `Kerrera`'s, "public"); returns the table's qualified name.

    Called when the app is ready and whenever `KERRERA` changes (`override_settings`).
    """
    given = getattr(settings, "KERRERA", None)
    prefix = given.get("prefix") if isinstance(given, dict) else None
    if not isinstance(prefix, str) or not prefix:
        prefix = inspect.signature(Kerrera).parameters["prefix"].default
    schema = prefix.replace('"', '""')
    # A name Django receives already quoted is used as it is: "schema"."oban_jobs".
    table = f'"{schema}"."oban_jobs"'
    if Job._meta.db_table != table:
        Job._meta.db_table = table
        for column in Job._meta.concrete_fields:
            # Each field caches its column reference, table name included.
            column.__dict__.pop("cached_col", None)
    return table
