"""URLs of the Django tests: the example shop's, plus the admin site."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("shopsite.urls")),
]
