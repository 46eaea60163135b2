"""Settings of the example shop: one PostgreSQL database, shared by Django and Kerrera.

The database comes from `DATABASE_URL` (a libpq URL; query parameters such as
`?sslmode=require` become `OPTIONS`); `KERRERA_PREFIX` picks the schema of Kerrera's
tables and `DJANGO_TEST_DATABASE` the database `manage.py test` creates.
"""

from __future__ import annotations

import os

from psycopg.conninfo import conninfo_to_dict

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1"]
ROOT_URLCONF = "shopsite.urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "kerrera.contrib.django",
    "orders",
]

_url = conninfo_to_dict(os.environ.get("DATABASE_URL", "postgresql:///kerrera_example"))
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _url.pop("dbname", "kerrera_example"),
        "USER": _url.pop("user", ""),
        "PASSWORD": _url.pop("password", ""),
        "HOST": _url.pop("host", ""),
        "PORT": _url.pop("port", ""),
        "OPTIONS": _url,  # whatever else the URL says: sslmode, options, ...
        "TEST": {"NAME": os.environ.get("DJANGO_TEST_DATABASE")},
    }
}

# Every key but "database" and "modules" is a Kerrera option; the database is
# DATABASES["default"] unless KERRERA["database"] names another alias.
KERRERA = {
    "queues": {"default": 5, "mail": 2},
    "prefix": os.environ.get("KERRERA_PREFIX", "public"),
    "modules": ["orders.workers"],
}
