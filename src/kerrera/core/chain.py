"""Chains: jobs of one partition that run strictly one after another, in insertion order.

A worker declares `chain=` (True, a dict of options or a `Chain`); every job it builds
then carries its partition in `meta["chain_id"]`: the worker's name, followed by the
values of the args keys and meta keys the chain is partitioned `by` (none: one chain for
the whole worker). The database does the rest (see `kerrera.engine.migrations.compose`):
a link inserted while an earlier link of its chain is unfinished is `suspended`, and the
ack that finishes a link releases the next one, on whichever node, without polling.

`on_failure` says what a cancelled or discarded link does to its chain: "continue" (the
default) releases the next link as a completion would; "hold" stops the chain until an
operator acts: retrying the failed link (its completion then continues the chain) or
releasing the chain (`await app.chain(chain_id).release()`), which skips it. A link
waiting to be retried (`retryable`) is not finished, so it always holds its chain. A
running link that is deleted lets the chain go on; a waiting link that is cancelled or
deleted is skipped. A node that dies mid-link keeps the chain waiting until the lifeline
rescues the link and it runs again.

The next link is woken by a notification on the insert channel; with
`notifier="isolated"` (no LISTEN) the producers' poll interval picks it up instead.
Each link carries `meta["chain_seq"]`, its place in the chain.

Example:
    class Webhook(Worker, queue="hooks", chain={"args": ["account_id"]}):
        async def process(self, job: Job) -> None: ...

    # webhooks of account 7 go out one at a time, in the order they were inserted
    await app.insert_all([Webhook.new({"account_id": 7, "event": e}) for e in events])
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from kerrera.core import codec
from kerrera.core.errors import ConfigError

#: The meta keys a link carries (`chain_id` as Oban Pro's chains name it).
CHAIN_ID = "chain_id"
ON_FAILURE = "chain_on_failure"
#: What a cancelled or discarded link does to its chain.
ON_FAILURE_CHOICES = ("continue", "hold")
_OPTIONS = ("args", "meta", "on_failure")


def _keys(value: object, option: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, Sequence) or not all(isinstance(k, str) and k for k in value):
        raise ConfigError(f"chain option {option!r} must be a list of key names, got {value!r}")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class Chain:
    """How a worker's jobs are chained: partitioned by the worker, plus the values of
    the `args` keys and `meta` keys given (both () by default), with `on_failure`
    "continue" (default) or "hold"."""

    args: tuple[str, ...] = ()
    meta: tuple[str, ...] = ()
    on_failure: str = "continue"

    def __post_init__(self) -> None:
        object.__setattr__(self, "args", _keys(self.args, "args"))
        object.__setattr__(self, "meta", _keys(self.meta, "meta"))
        if self.on_failure not in ON_FAILURE_CHOICES:
            raise ConfigError(
                f"chain option 'on_failure' must be 'continue' or 'hold', got {self.on_failure!r}"
            )

    @classmethod
    def coerce(cls, value: object) -> Chain:
        """A `Chain` from the `chain=` option: True, a dict of options, or a `Chain`."""
        if isinstance(value, Chain):
            return value
        if value is True:
            return cls()
        if isinstance(value, Mapping):
            for name in value:
                if name not in _OPTIONS:
                    close = difflib.get_close_matches(str(name), _OPTIONS, n=1)
                    hint = f", did you mean {close[0]!r}?" if close else f" (known: {_OPTIONS})"
                    raise ConfigError(f"unknown chain option {name!r}{hint}")
            return cls(**dict(value))
        raise ConfigError(f"option 'chain' must be True, a dict or a Chain, got {value!r}")

    def chain_id(
        self, worker: str, args: Mapping[str, Any] | None, meta: Mapping[str, Any] | None
    ) -> str:
        """The partition of a job of `worker` with these args and meta (a missing key
        counts as null)."""
        if not self.args and not self.meta:
            return worker
        args, meta = args or {}, meta or {}
        values = [args.get(k) for k in self.args] + [meta.get(k) for k in self.meta]
        return f"{worker}{codec.dumps(values)}"

    def stamp(
        self, worker: str, args: Mapping[str, Any] | None, meta: dict[str, Any]
    ) -> dict[str, Any]:
        """`meta` with this chain's keys added (an explicit `chain_id` is kept)."""
        meta.setdefault(CHAIN_ID, self.chain_id(worker, args, meta))
        if self.on_failure == "hold":
            meta[ON_FAILURE] = "hold"
        return meta


def stamp_chain(
    chain: Chain | None, worker: str, args: Mapping[str, Any] | None, meta: dict[str, Any]
) -> dict[str, Any]:
    """`meta` of a new job of `worker`, with its chain's keys when it has a chain."""
    return meta if chain is None else chain.stamp(worker, args, meta)


class _Options(Protocol):
    chain: Chain | None


class _Chained(Protocol):
    """A worker (class or instance): its stored name and options."""

    name: str
    options: _Options


def chain_id(
    worker: _Chained,
    args: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> str:
    """The chain a job of `worker` with these args (and meta) belongs to: what its
    `meta["chain_id"]` holds, and what `app.chain(...)` takes.

    Example: `await app.chain(chain_id(Webhook, {"account_id": 7})).release()`."""
    chain = worker.options.chain
    if chain is None:
        raise ConfigError(f"worker {worker.name} has no chain= option")
    return chain.chain_id(worker.name, args, meta)
