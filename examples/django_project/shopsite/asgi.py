"""ASGI entry point: `uvicorn shopsite.asgi:application` (serves the async view too)."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shopsite.settings")
application = get_asgi_application()
