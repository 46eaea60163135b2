"""Batch and chain operations, written once as steps (see steps.py): creating a batch
with its jobs, appending to and closing an open one, reading a batch's or a chain's
counts, and releasing a held chain. What happens when jobs change state is done by the
triggers of migration 7 (migrations/compose.py), not here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from kerrera.core import codec
from kerrera.core.errors import ConfigError
from kerrera.core.job import Job
from kerrera.engine.jobs import insert_jobs
from kerrera.engine.statements import Statements
from kerrera.engine.steps import Atomic, Query, Route, Steps


@dataclass(frozen=True, slots=True)
class BatchCounts:
    """A batch as the database counts it: its members (`total`), those `attempted` (their
    first run ended, or they were finalised without one), `completed`, `cancelled` and
    `discarded`; `fired` lists the callbacks already inserted, `callbacks` those declared."""

    batch_id: str
    open: bool
    total: int
    attempted: int
    completed: int
    cancelled: int
    discarded: int
    fired: tuple[str, ...]
    callbacks: tuple[str, ...]
    inserted_at: datetime
    closed_at: datetime | None

    @property
    def finished(self) -> bool:
        """Whether it is closed and every member reached a final state."""
        done = self.completed + self.cancelled + self.discarded
        return not self.open and done == self.total


@dataclass(frozen=True, slots=True)
class ChainCounts:
    """A chain as the database knows it: `inserted` links ever, the link that may run now
    (`active_id`, None when none does), the failed link holding it (`held_by`), and the
    links `waiting` (suspended) behind them."""

    chain_id: str
    inserted: int
    active_id: int | None
    held_by: int | None
    waiting: int
    inserted_at: datetime

    @property
    def held(self) -> bool:
        """Whether a failed link holds the chain until an operator acts."""
        return self.held_by is not None


def insert_batch(
    batch_id: str,
    callbacks: dict[str, dict[str, Any]],
    open_: bool,
    jobs: Sequence[Job],
    route: Route,
) -> Steps[list[Job]]:
    """Create the batch and insert its jobs (which already carry its id), in one
    transaction. A batch id in use is a `ConfigError`."""
    saved: list[Job] = yield Atomic(_create(batch_id, callbacks, open_, jobs, route))
    return saved


def _create(
    batch_id: str,
    callbacks: dict[str, dict[str, Any]],
    open_: bool,
    jobs: Sequence[Job],
    route: Route,
) -> Steps[list[Job]]:
    params = {
        "batch_id": batch_id, "open": open_, "callbacks": codec.dumps(callbacks), "n": len(jobs),
    }  # fmt: skip
    made = yield Query("batch_create", params, tuple_row)
    if not made:
        raise ConfigError(f"option 'batch_id': a batch {batch_id!r} exists already")
    saved = yield from insert_jobs(jobs, route) if jobs else _nothing()
    if not open_ and not jobs:
        yield Query("batch_fire", {"batch_id": batch_id}, tuple_row)
    return saved


def _nothing() -> Steps[list[Job]]:
    return []
    yield  # (a generator that yields no step)


def append_batch(batch_id: str, jobs: Sequence[Job], route: Route) -> Steps[list[Job]]:
    """Add jobs (carrying the batch's id) to an open batch, in one transaction. An
    unknown or closed batch is a `ConfigError`."""
    saved: list[Job] = yield Atomic(_append(batch_id, jobs, route))
    return saved


def _append(batch_id: str, jobs: Sequence[Job], route: Route) -> Steps[list[Job]]:
    rows = yield Query("batch_append", {"batch_id": batch_id, "n": len(jobs)}, tuple_row)
    if not rows:
        raise ConfigError(f"batch {batch_id!r} is unknown or closed: jobs cannot be appended")
    saved: list[Job] = yield from insert_jobs(jobs, route)
    return saved


def close_batch(batch_id: str) -> Steps[bool]:
    """Seal a batch and insert the callbacks that became due; False if it is unknown."""
    closed: bool = yield Atomic(_close(batch_id))
    return closed


def _close(batch_id: str) -> Steps[bool]:
    rows = yield Query("batch_close", {"batch_id": batch_id}, tuple_row)
    if rows:
        yield Query("batch_fire", {"batch_id": batch_id}, tuple_row)
    return bool(rows)


def batch_status(batch_id: str) -> Steps[BatchCounts | None]:
    """The batch's counts, or None if there is no such batch."""
    rows = yield Query("batch_status", {"batch_id": batch_id}, tuple_row)
    if not rows:
        return None
    return _counts(rows[0])


async def recent_batches(
    pool: AsyncConnectionPool[Any], prefix: str = "public", *, limit: int = 50
) -> list[BatchCounts]:
    """The newest `limit` batches (1..500), newest first, read on a connection of `pool`
    (e.g. the dashboard's; autocommit). Read-only."""
    params = {"limit": _check_limit(limit)}
    async with pool.connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(_statements(prefix)["batch_list"], params)
        return [_counts(r) for r in await cur.fetchall()]


@cache
def _statements(prefix: str) -> Statements:
    return Statements(prefix)


def _check_limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 500:
        raise ConfigError(f"option 'limit' must be an integer 1..500, got {limit!r}")
    return limit


def _counts(r: Any) -> BatchCounts:
    batch_id, open_, total, attempted, completed, cancelled, discarded = r[:7]
    return BatchCounts(
        batch_id, open_, total, attempted, completed, cancelled, discarded,
        tuple(r[7]), tuple(r[8]), r[9], r[10],
    )  # fmt: skip


def chain_status(chain_id: str) -> Steps[ChainCounts | None]:
    """The chain's counts, or None if no link of it was ever inserted."""
    rows = yield Query("chain_status", {"chain_id": chain_id}, tuple_row)
    return ChainCounts(*rows[0]) if rows else None


def release_chain(chain_id: str) -> Steps[int | None]:
    """Let a held chain go on (the failed link holding it is skipped): release its next
    link unless one runs. Returns the id of the link released, if any."""
    released: int | None = yield Atomic(_release(chain_id))
    return released


def _release(chain_id: str) -> Steps[int | None]:
    rows = yield Query("chain_unhold", {"chain_id": chain_id}, tuple_row)
    if not rows:
        raise ConfigError(f"no chain {chain_id!r}")
    _held_by, idle = rows[0]
    if not idle:
        return None
    released = yield Query("chain_release", {"chain_id": chain_id}, tuple_row)
    return int(released[0][0]) if released and released[0][0] is not None else None
