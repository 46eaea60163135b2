"""A system check of `settings.KERRERA`, so mistakes show at `manage.py check` (and before
any command), not at the first insert."""

from __future__ import annotations

from typing import Any

from kerrera import ConfigError
from kerrera.contrib.django._django import ImproperlyConfigured, checks
from kerrera.contrib.django.conf import build_app


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Error `kerrera.E001` when `settings.KERRERA` or its database cannot make a Kerrera.

    Building the instance only validates: it connects to nothing.

    Example:
        $ python manage.py check
        ?: (kerrera.E001) settings.KERRERA: unknown option 'queus', did you mean 'queues'?
    """
    try:
        build_app()
    except (ConfigError, ImproperlyConfigured) as exc:
        return [
            checks.Error(
                str(exc),
                hint="See docs/django.md for the KERRERA setting.",
                id="kerrera.E001",
            )
        ]
    return []
