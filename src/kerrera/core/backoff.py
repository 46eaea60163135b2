"""Retry delays: Oban's default formula, shared by workers that do not override it."""

from __future__ import annotations

import random


def default_backoff(attempt: int, max_attempts: int, *, jitter: float = 0.1) -> float:
    """Seconds to wait before retrying after failed `attempt` (1-based).

    `15 + 2**attempt`, plus up to `jitter` (10%) more, where `attempt` is scaled down
    proportionally when `max_attempts > 20` so that the delay never exceeds about 2**20 s.
    After attempt 1 that is 17-18.7 s; after attempt 10, about 17 minutes.
    """
    if max_attempts > 20:
        attempt = round(attempt / max_attempts * 20)
    base = float(15 + 2 ** max(attempt, 0))
    return base + base * jitter * random.random()


def reconnect_backoff(failures: int, *, base: float = 0.1, cap: float = 10.0) -> float:
    """Jittered exponential delay for reconnecting after `failures` consecutive errors."""
    delay = min(cap, base * 2.0 ** min(failures, 20))
    return delay / 2 + random.random() * delay / 2
