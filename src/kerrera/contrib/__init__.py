"""Integrations with web frameworks and ORMs (each needs its framework installed)."""
