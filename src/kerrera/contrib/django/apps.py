"""The Django app: add `"kerrera.contrib.django"` to `INSTALLED_APPS`."""

from __future__ import annotations

from typing import Any

from kerrera.contrib.django._django import AppConfig, checks, setting_changed


class KerreraConfig(AppConfig):  # type: ignore[misc]  # Django is untyped
    """Registers the settings check, the `kerrera` management command and the jobs admin
    (when `django.contrib.admin` is installed).

    Example (settings.py):
        INSTALLED_APPS = [..., "kerrera.contrib.django"]
        KERRERA = {"queues": {"default": 10}, "modules": ["shop.workers"]}
    """

    name = "kerrera.contrib.django"
    label = "kerrera"
    verbose_name = "Kerrera"

    def ready(self) -> None:
        from kerrera.contrib.django.checks import check_settings
        from kerrera.contrib.django.models import follow_prefix

        checks.register(check_settings, "kerrera")
        follow_prefix()
        setting_changed.connect(_forget_shared_app, dispatch_uid="kerrera-settings")


def _forget_shared_app(*, setting: str, **kwargs: Any) -> None:
    # override_settings in tests: the shared instance was built from the old values.
    if setting in ("KERRERA", "DATABASES"):
        from kerrera.contrib.django.models import follow_prefix
        from kerrera.contrib.django.shared import reset_app

        reset_app()
        follow_prefix()
