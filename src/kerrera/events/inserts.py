"""The `insert.start` and `insert` telemetry events around an insert (async or sync)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from kerrera import telemetry
from kerrera.core.job import Job

#: The events around an insert; `observe_insert` only while one has a handler.
INSERT_EVENTS = ("insert.start", "insert")


def inserts_watched() -> bool:
    """Whether an insert should go through `observe_insert`."""
    return telemetry.any_active(INSERT_EVENTS)


@contextmanager
def observe_insert(batch: list[Job]) -> Iterator[Callable[[list[Job]], list[Job]]]:
    """Emit `insert.start` now (handlers may add to each job's `meta`, e.g. a trace
    context) and `insert` when the block ends; the block passes the saved jobs through
    the callable it is given. A failed insert emits `insert` with the error."""
    telemetry.execute("insert.start", {"count": len(batch)}, {"jobs": batch})
    started = time.perf_counter()
    saved: list[Job] = []

    def done(jobs: list[Job]) -> list[Job]:
        saved.extend(jobs)
        return jobs

    error: BaseException | None = None
    try:
        yield done
    except BaseException as exc:
        error = exc
        raise
    finally:
        measurements: dict[str, Any] = {
            "count": len(saved) if error is None else len(batch),
            "conflicts": sum(1 for j in saved if j.conflict),
            "duration": time.perf_counter() - started,
        }
        queues = sorted({j.queue for j in (saved or batch)})
        metadata = {"jobs": saved if error is None else batch, "queues": queues, "error": error}
        telemetry.execute("insert", measurements, metadata)
