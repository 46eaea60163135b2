"""Values a worker returns (or raises) to choose how its job ends."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Snooze:
    """Run the job again in `seconds` without spending an attempt.

    Example: `return Snooze(30)` when a rate-limited API asks to come back later.
    """

    seconds: float

    def __post_init__(self) -> None:
        ok = isinstance(self.seconds, int | float) and not isinstance(self.seconds, bool)
        if not ok or not math.isfinite(self.seconds) or self.seconds < 0:
            raise ValueError(f"Snooze seconds must be a finite number >= 0, got {self.seconds!r}")


@dataclass(frozen=True, slots=True)
class Cancel:
    """End the job as `cancelled`, recording `reason` in its errors.

    Example: `return Cancel("the account was deleted")`.
    """

    reason: str = "cancelled"


@dataclass(frozen=True, slots=True)
class Record:
    """Complete the job and store `value` (JSON-serialisable) in `meta["return"]`.

    Example: `return Record({"duration_s": 12.5, "stems": 4})`.
    """

    value: Any


class CancelJob(Exception):
    """Raise inside a worker to cancel the job (same as returning `Cancel(reason)`)."""

    def __init__(self, reason: str = "cancelled") -> None:
        super().__init__(reason)
        self.reason = reason


class SnoozeJob(Exception):
    """Raise inside a worker to snooze the job (same as returning `Snooze(seconds)`)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"snoozed for {seconds}s")
        self.seconds = seconds
