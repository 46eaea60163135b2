"""Chunk workers' one statement, as steps (see steps.py): claiming more jobs of one
worker and partition for a chunk that a producer is filling."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kerrera.core import codec
from kerrera.core.job import RunningJob
from kerrera.engine.steps import Query, Steps


def fetch_chunk(
    queue: str, worker: str, by: Sequence[str], partition: Sequence[Any], demand: int,
    node: str, producer: str,
) -> Steps[list[RunningJob]]:  # fmt: skip
    """Claim up to `demand` available jobs of `worker` in `queue` whose args hold
    `partition` under the keys `by` (no keys: any job of the worker), marked executing
    under `producer`; return them in fetch order."""
    params = {
        "queue": queue, "worker": worker, "by": list(by), "partition": codec.dumps(list(partition)),
        "demand": demand, "node": node, "producer": producer,
    }  # fmt: skip
    rows: list[RunningJob] = yield Query("fetch_chunk", params)
    return rows
