"""Settings of the example shop plus Kerrera's Tasks backend, for a `manage.py kerrera
start` that runs Django tasks (`DJANGO_SETTINGS_MODULE=djsite_settings`)."""

from __future__ import annotations

from shopsite.settings import *  # noqa: F403  (the example's settings, extended)

TASKS = {
    "default": {
        "BACKEND": "kerrera.contrib.django.tasks.KerreraBackend",
        "QUEUES": ["default", "mail"],
        "OPTIONS": {"max_attempts": 1},
    }
}
