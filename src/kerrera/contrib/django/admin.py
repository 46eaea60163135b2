# mypy: disable-error-code="import-untyped,untyped-decorator"
"""The jobs admin: Kerrera's `oban_jobs` in Django's admin site.

Listed newest first with their state, queue, worker, attempts and times; filtered by
state, queue and worker; searched by id or worker name. Nothing is edited in a form: the
actions retry, cancel and delete go through Kerrera's API, whose guarded statements
leave a running job alone (it is cancelled on the node that runs it) and notify the
nodes, as `kerrera jobs retry|cancel|delete` does. Retry and cancel need the `change`
permission on jobs, delete the `delete` one.

Installed with the app when `django.contrib.admin` is in `INSTALLED_APPS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from django.contrib import admin, messages
from django.utils.html import format_html, format_html_join

from kerrera import Job as KerreraJob
from kerrera.contrib.django.conf import KerreraSettings
from kerrera.contrib.django.models import Job
from kerrera.contrib.django.shared import get_app

#: Errors shown on a job's page, the latest last.
SHOWN_ERRORS = 5


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):  # type: ignore[misc]  # Django is untyped
    """A read-only view of jobs with retry / cancel / delete actions through Kerrera."""

    list_display = (
        "id", "state", "queue", "worker", "attempts", "scheduled_at", "attempted_at",
    )  # fmt: skip
    list_filter = ("state", "queue", "worker")
    search_fields = ("worker",)
    search_help_text = "A job id, or part of a worker name."
    ordering = ("-id",)
    list_per_page = 50
    # Counting every row of a large jobs table on each page would be the slowest query.
    show_full_result_count = False
    actions = ("retry_jobs", "cancel_jobs", "delete_jobs")
    fields = (
        "id", "state", "queue", "worker", "args", "meta", "tags", "attempts", "priority",
        "inserted_at", "scheduled_at", "attempted_at", "attempted_by", "completed_at",
        "discarded_at", "cancelled_at", "error_log",
    )  # fmt: skip
    readonly_fields = fields

    def get_queryset(self, request: Any) -> Any:
        """Jobs on the database Kerrera uses (`KERRERA["database"]`)."""
        return super().get_queryset(request).using(KerreraSettings.load().database)

    def get_search_results(self, request: Any, queryset: Any, search_term: str) -> Any:
        """A number also finds the job with that id."""
        found, duplicates = super().get_search_results(request, queryset, search_term)
        term = search_term.strip()
        if term.isdigit() and int(term) < 2**63:  # (a larger number is no bigint id)
            found = found | queryset.filter(id=int(term))
        return found, duplicates

    # Jobs are inserted by code and changed by Kerrera, never in a form.
    def has_add_permission(self, request: Any) -> bool:
        """No form creates a job."""
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        """No form edits a job (its args must not change under a node running it)."""
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        """No ORM delete (which would delete running jobs behind Kerrera's back): this
        also hides Django's `delete_selected`; the `delete_jobs` action deletes through
        Kerrera."""
        return False

    def has_retry_permission(self, request: Any) -> bool:
        """Retry and cancel: the `change` permission on jobs."""
        return bool(request.user.has_perm("kerrera.change_job"))

    def has_discard_permission(self, request: Any) -> bool:
        """Delete: the `delete` permission on jobs."""
        return bool(request.user.has_perm("kerrera.delete_job"))

    @admin.display(description="attempt", ordering="attempt")
    def attempts(self, job: Job) -> str:
        """Attempts made of the most allowed, e.g. 2/20."""
        return f"{job.attempt}/{job.max_attempts}"

    @admin.display(description="errors")
    def error_log(self, job: Job) -> Any:
        """The latest errors, read through Kerrera (the column is a `jsonb[]`)."""
        found = get_app().sync.get_job(job.id)
        errors = found.errors[-SHOWN_ERRORS:] if found is not None else []
        if not errors:
            return "-"
        rows = ((e.get("attempt", "?"), e.get("at", ""), e.get("error", "")) for e in errors)
        return format_html(
            "<div>{}</div>",
            format_html_join("", "<p>attempt {} at {}</p><pre>{}</pre>", rows),
        )

    @admin.action(description="Retry selected jobs", permissions=["retry"])
    def retry_jobs(self, request: Any, queryset: Any) -> None:
        """Make the jobs available now; executing ones are left alone."""
        self._apply(request, queryset, get_app().sync.retry_job, "retried", "executing")

    @admin.action(description="Cancel selected jobs", permissions=["retry"])
    def cancel_jobs(self, request: Any, queryset: Any) -> None:
        """Cancel unfinished jobs; a running one is stopped on its node."""
        self._apply(request, queryset, get_app().sync.cancel_job, "cancelled", "already finished")

    @admin.action(description="Delete selected jobs", permissions=["discard"])
    def delete_jobs(self, request: Any, queryset: Any) -> None:
        """Delete jobs that are not executing."""
        self._apply(request, queryset, get_app().sync.delete_job, "deleted", "executing")

    def _apply(
        self,
        request: Any,
        queryset: Any,
        action: Callable[[Sequence[int]], Any],
        done: str,
        why: str,
    ) -> None:
        ids = [int(pk) for pk in queryset.values_list("id", flat=True)]
        changed: list[KerreraJob] = action(ids)
        self.message_user(request, f"{len(changed)} of {_jobs(len(ids))} {done}.")
        left = len(ids) - len(changed)
        if left:
            was = "was" if left == 1 else "were"
            self.message_user(
                request,
                f"{_jobs(left)} {was} not {done} ({why}, or gone).",
                messages.WARNING,
            )


def _jobs(count: int) -> str:
    return f"{count} job" if count == 1 else f"{count} jobs"
