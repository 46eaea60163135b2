"""Kerrera's version (one place: the package and integrations read it)."""

VERSION = "0.1.0"
