"""Unique jobs: which jobs count as duplicates of each other, and the key that says so.

Uniqueness is enforced by the database, not by a check before the insert: every unique
job carries `meta.uniq_key` (a hash of the fields that identify it) and `meta.uniq_states`
(the states in which it blocks duplicates), and a unique partial index over the key
admits one row per key among rows whose state is listed. Concurrent transactions and
batch inserts therefore cannot both insert a duplicate. A finite `period` is honoured by
retiring an older holder (its key is renamed `uniq_retired`) in the same statement as
the insert.

Rows without a key (Elixir Oban's, plain inserts) are matched the way Oban matches, by
a lookup before the insert (`Unique.lookup`); that part is a check, not a guarantee
(see engine/unique.py).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from kerrera.core.errors import ConfigError

if TYPE_CHECKING:
    from kerrera.core.job import Job

FIELDS = ("args", "meta", "queue", "worker")
#: Meta keys that say how a job travelled, not what it is: never part of a unique key
#: (a trace context differs per insert, and would make every job unique).
UNKEYED = frozenset({"otel", "progress"})
REPLACEABLE = (
    "args",
    "max_attempts",
    "meta",
    "priority",
    "queue",
    "scheduled_at",
    "tags",
    "worker",
)
ALL_STATES = (
    "available",
    "suspended",
    "scheduled",
    "executing",
    "retryable",
    "completed",
    "discarded",
    "cancelled",
)
#: A job that has not finished must always count: otherwise a job moving between these
#: states (staged, fetched, snoozed, retried) could collide with a newer duplicate and
#: fail the statement that moves it, blocking its whole queue.
INCOMPLETE = ("available", "suspended", "scheduled", "executing", "retryable")
DEFAULT_STATES = (*INCOMPLETE, "completed")
#: `replace=[...]` given as a plain list applies to jobs in these states.
WAITING = ("available", "scheduled", "retryable", "suspended")


@dataclass(frozen=True, slots=True)
class Unique:
    """How to tell a job from its duplicates (`unique=` on a worker or on `new()`).

    Options:
      period (60 s): a job is a duplicate of one inserted (or scheduled, see `timestamp`)
        less than this many seconds before it; `None` or `math.inf` means forever.
      fields (args, queue, worker): what must be equal; any of args, meta, queue, worker.
      keys (None: all): only these keys of args and meta are compared.
      states (every state except discarded and cancelled): the states in which an
        existing job blocks a new one; available, scheduled, executing and retryable
        must be among them.
      timestamp ("inserted_at"): or "scheduled_at", compared with the new job's.
      replace (None): fields of the existing job to overwrite on a conflict, as a list
        (applied while it waits: available, scheduled, retryable) or a dict
        {state: [fields]}; any of args, max_attempts, meta, priority, queue,
        scheduled_at, tags, worker.

    Example:
        class Digest(Worker, unique=Unique(period=3600, keys=["user_id"])): ...
        job = await app.insert(Digest.new({"user_id": 7}))
        if job.conflict: ...  # one was already waiting: job is that one
    """

    period: float | None = 60.0
    fields: tuple[str, ...] = ("args", "queue", "worker")
    keys: tuple[str, ...] | None = None
    states: tuple[str, ...] = DEFAULT_STATES
    timestamp: str = "inserted_at"
    replace: Mapping[str, tuple[str, ...]] | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalise in place once
        set_(self, "period", _check_period(self.period))
        set_(self, "fields", _check_names(self.fields, FIELDS, "unique fields"))
        if not self.fields:
            raise ConfigError(
                f"option 'unique fields' must name at least one of {', '.join(FIELDS)}"
            )
        if self.keys is not None:
            keys = self.keys
            if isinstance(keys, str) or not all(isinstance(k, str) for k in keys):
                raise ConfigError(f"option 'unique keys' must be a list of strings, got {keys!r}")
            set_(self, "keys", tuple(keys))
        states = _check_names(self.states, ALL_STATES, "unique states")
        missing = [s for s in INCOMPLETE if s not in states and s != "suspended"]
        if missing:
            raise ConfigError(
                f"option 'unique states' must include {', '.join(missing)}: "
                "a job that has not finished always blocks its duplicates"
            )
        set_(self, "states", tuple(s for s in ALL_STATES if s in states or s == "suspended"))
        if self.timestamp not in ("inserted_at", "scheduled_at"):
            raise ConfigError(
                "option 'unique timestamp' must be 'inserted_at' or "
                f"'scheduled_at', got {self.timestamp!r}"
            )
        set_(self, "replace", _check_replace(self.replace))

    @classmethod
    def coerce(cls, value: object) -> Unique | None:
        """Accept a `Unique`, True (the defaults), a number (the period), a dict of
        options, or None/False (not unique)."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, Unique):
            return value
        if isinstance(value, int | float):
            return cls(period=value)
        if isinstance(value, Mapping):
            unknown = set(value) - {"period", "fields", "keys", "states", "timestamp", "replace"}
            if unknown:
                raise ConfigError(f"unknown option(s) in 'unique': {', '.join(sorted(unknown))}")
            return cls(**dict(value))
        raise ConfigError(
            "option 'unique' must be True, a period in seconds, a dict of "
            f"options or a Unique, got {value!r}"
        )

    def key(self, job: Job) -> str:
        """The identity of `job` under these options: equal keys are duplicates."""
        parts = {name: self._compared(job, name) for name in self.fields}
        blob = orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(blob).hexdigest()[:32]

    def stamp(self, job: Job) -> dict[str, Any]:
        """The `meta` that makes the index see `job` (its key and counted states)."""
        return {"uniq_key": self.key(job), "uniq_states": list(self.states)}

    def _compared(self, job: Job, name: str) -> Any:
        """The part of field `name` of `job` that these options compare."""
        value: Any = getattr(job, name)
        if name not in ("args", "meta"):
            return value
        return {
            k: v
            for k, v in (value or {}).items()
            if k not in UNKEYED
            and not k.startswith("uniq_")
            and (self.keys is None or k in self.keys)
        }

    def lookup(self, job: Job) -> dict[str, Any]:
        """How to find a duplicate of `job` that carries no Kerrera key (a row that Elixir
        Oban, or a plain insert, wrote), compared the way Oban compares.

        Fields outside `fields` are None (not compared); `args`/`meta` are the compared
        parts. With `keys` (`subset`), a row's value must contain them (Oban's jsonb
        containment); without, its whole value, less the keys that never count, must
        equal them. `lead` names the index the lookup starts from: GIN on args or meta
        (containment of a non-empty part), else the (state, queue, ...) btree.
        """
        compared = {name: self._compared(job, name) for name in self.fields}
        lead = next((n for n in ("args", "meta") if compared.get(n)), None)
        return {
            "lead": lead or ("queue" if "queue" in compared else "state"),
            "worker": compared.get("worker"),
            "queue": compared.get("queue"),
            "args": compared.get("args"),
            "meta": compared.get("meta"),
            "subset": self.keys is not None,
            "states": list(self.states),
        }


def _check_period(period: object) -> float | None:
    if period is None or period == "infinity":
        return None
    if not isinstance(period, int | float) or isinstance(period, bool) or not period > 0:
        raise ConfigError(
            f"option 'unique period' must be seconds > 0 or None (forever), got {period!r}"
        )
    return None if math.isinf(period) else float(period)


def _check_names(given: object, allowed: tuple[str, ...], option: str) -> tuple[str, ...]:
    if isinstance(given, str) or not isinstance(given, Iterable):
        raise ConfigError(f"option {option!r} must be a list, got {given!r}")
    out = tuple(given)
    wrong = [n for n in out if n not in allowed]
    if wrong:
        raise ConfigError(
            f"option {option!r}: unknown {', '.join(map(repr, wrong))}; "
            f"choose from {', '.join(allowed)}"
        )
    return out


def _check_replace(value: object) -> dict[str, tuple[str, ...]] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return {
            state: _check_names(fields, REPLACEABLE, "unique replace")
            for state in _check_names(tuple(value), ALL_STATES, "unique replace")
            for fields in [value[state]]
        }
    fields = _check_names(value, REPLACEABLE, "unique replace")
    return {state: fields for state in WAITING}
