# mypy: disable-error-code="import-untyped"
"""Django as typed code sees it: Django ships no type information (django-stubs is not a
dependency), so the few names this integration uses are imported here, once, as `Any`.
"""

from __future__ import annotations

from django.apps import AppConfig
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.signals import setting_changed
from django.db import close_old_connections, connections
from django.utils.connection import ConnectionDoesNotExist

__all__ = [
    "AppConfig",
    "BaseCommand",
    "CommandError",
    "CommandParser",
    "ConnectionDoesNotExist",
    "ImproperlyConfigured",
    "checks",
    "close_old_connections",
    "connections",
    "setting_changed",
    "settings",
]
