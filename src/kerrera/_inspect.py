"""Operator API of `Kerrera`: list and count jobs, act on jobs chosen by a filter."""

from __future__ import annotations


class InspectMixin:
    """Listing, counting and bulk management, mixed into `Kerrera`."""
