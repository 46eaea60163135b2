"""`id or ids` arguments of the management calls, shared by the async and sync faces."""

from __future__ import annotations

from collections.abc import Sequence

from kerrera.core.job import Job


def as_ids(ids: int | Sequence[int]) -> list[int]:
    """One id or many, as a list."""
    return [ids] if isinstance(ids, int) else list(ids)


def one_or_many(ids: int | Sequence[int], jobs: list[Job]) -> Job | list[Job] | None:
    """Given one id, the one job (or None); given many, the list."""
    if isinstance(ids, int):
        return jobs[0] if jobs else None
    return jobs
