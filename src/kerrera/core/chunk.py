"""Chunk workers: one call of `process` runs many jobs of a worker together.

A chunk worker receives a list of jobs instead of one: up to `size` of them, or whatever
arrived within `timeout` seconds of the first, optionally only jobs whose args agree on
the `by` keys (one partition per chunk). Batching pays off where one call can do the
work of many: a bulk INSERT, one API request for a hundred webhooks, one GPU batch.

Each job of a chunk is still a row of its own, acked on its own: returning normally
completes them all, a `ChunkResult` fails, snoozes or cancels some of them by id, and
raising (or returning `Snooze`/`Cancel`) applies to the whole chunk. How chunks are
collected and run is the queue runtime's business (`kerrera.queue.chunks`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kerrera.core import codec
from kerrera.core.errors import ConfigError
from kerrera.core.job import Job
from kerrera.core.worker import _REGISTRY, Worker, loaded_worker, resolve_worker

#: Default number of jobs in a chunk.
DEFAULT_SIZE = 100
#: Default seconds a chunk waits to fill before it runs with what it has.
DEFAULT_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class ChunkOptions:
    """How a chunk worker's jobs are grouped: at most `size` jobs, waiting at most
    `timeout` seconds after the first for more, jobs of one partition of the `by` args
    keys together (empty: one partition)."""

    size: int = DEFAULT_SIZE
    timeout: float = DEFAULT_TIMEOUT
    by: tuple[str, ...] = ()

    def partition(self, args: Mapping[str, Any]) -> list[Any]:
        """The values of the `by` keys in `args` (None for a missing key)."""
        return [args.get(key) for key in self.by]

    def partition_key(self, args: Mapping[str, Any]) -> str:
        """A hashable form of `partition(args)`: jobs with equal keys share a chunk."""
        return codec.dumps(self.partition(args)) if self.by else ""


def _check_size(size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"option 'size' must be an integer >= 1, got {size!r}")
    return size


def _check_wait(timeout: object) -> float:
    ok = isinstance(timeout, int | float) and not isinstance(timeout, bool)
    if not ok or not math.isfinite(timeout) or timeout < 0:  # type: ignore[arg-type,operator]
        raise ConfigError(
            f"option 'timeout' (seconds a chunk waits to fill) must be a number >= 0, "
            f"got {timeout!r}"
        )
    return float(timeout)  # type: ignore[arg-type]


def _check_run_timeout(value: object) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not value > 0:  # type: ignore[operator]
        raise ConfigError(f"option 'run_timeout' must be seconds > 0 or None, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def _check_by(by: object) -> tuple[str, ...]:
    if isinstance(by, str) or not isinstance(by, Iterable):
        raise ConfigError(f"option 'by' must be a list of args keys, got {by!r}")
    keys = tuple(by)
    for key in keys:
        if not isinstance(key, str) or not key:
            raise ConfigError(f"option 'by' must hold non-empty strings, got {key!r}")
    if len(set(keys)) != len(keys):
        raise ConfigError(f"option 'by' names a key twice: {list(keys)!r}")
    return keys


def _job_id(key: object, option: str) -> int:
    if isinstance(key, Job) and key.id is not None:
        return key.id
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    raise ConfigError(f"ChunkResult {option!r} must be keyed by job id (or Job), got {key!r}")


@dataclass(frozen=True, slots=True)
class ChunkResult:
    """What a chunk's `process` returns to end some of its jobs other than completed.

    Keys are job ids (or the `Job` objects themselves); every job of the chunk that is
    not named completes. `failed` maps to an exception or a message (the job is retried
    with the worker's backoff, or discarded when its attempts are spent); `snoozed` to
    seconds (run again later, no attempt spent); `cancelled` to a reason. A job named
    twice, or a job that is not in the chunk, is an error that fails the whole chunk.

    Example:
        async def process(self, jobs):
            sent = await send_all([j.args for j in jobs])
            return ChunkResult(
                failed={j.id: sent[j.id].error for j in jobs if not sent[j.id].ok},
                snoozed={j.id: 60 for j in jobs if sent[j.id].rate_limited},
            )
    """

    failed: Mapping[int, BaseException | str] = field(default_factory=dict)
    snoozed: Mapping[int, float] = field(default_factory=dict)
    cancelled: Mapping[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        failed = {_job_id(k, "failed"): _check_failure(v) for k, v in self.failed.items()}
        snoozed = {_job_id(k, "snoozed"): _check_snooze(v) for k, v in self.snoozed.items()}
        cancelled = {_job_id(k, "cancelled"): str(v) for k, v in self.cancelled.items()}
        seen: set[int] = set()
        for ids in (failed, snoozed, cancelled):
            twice = seen & ids.keys()
            if twice:
                raise ConfigError(f"ChunkResult names job(s) {sorted(twice)} more than once")
            seen |= ids.keys()
        object.__setattr__(self, "failed", failed)
        object.__setattr__(self, "snoozed", snoozed)
        object.__setattr__(self, "cancelled", cancelled)

    def named(self) -> set[int]:
        """Every job id this result names."""
        return {*self.failed, *self.snoozed, *self.cancelled}

    def check(self, ids: Iterable[int]) -> None:
        """Raise `ValueError` if this result names a job that is not among `ids`."""
        stray = self.named() - set(ids)
        if stray:
            raise ValueError(f"ChunkResult names job(s) {sorted(stray)} that are not in this chunk")


def _check_failure(value: object) -> BaseException | str:
    if isinstance(value, BaseException | str):
        return value
    raise ConfigError(f"ChunkResult 'failed' values must be exceptions or messages, got {value!r}")


def _check_snooze(value: object) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < 0:  # type: ignore[arg-type,operator]
        raise ConfigError(f"ChunkResult 'snoozed' values must be seconds >= 0, got {value!r}")
    return float(value)  # type: ignore[arg-type]


class ChunkWorker(Worker, abstract=True):
    """Base class of chunk workers: `async def process(self, jobs: list[Job])`.

    Class keywords: `size` (100: most jobs in a chunk), `timeout` (1.0: seconds a chunk
    waits after its first job for more before it runs with what it has; 0 runs at once),
    `by` (None: a list of args keys; a chunk then holds only jobs whose args agree on
    them), `run_timeout` (None: the limit on one call of `process`, seconds; past it every
    job of the chunk fails), plus the options of `Worker` (queue, max_attempts, priority,
    tags, unique, name). Note that `timeout` here is the wait to fill a chunk, not a run
    limit as on a plain worker.

    A chunk takes one slot of its queue's concurrency limit however many jobs it holds:
    `queues={"webhooks": 2}` runs two chunks at a time on a node.

    Example:
        class SendWebhooks(ChunkWorker, queue="webhooks", size=50, by=["account_id"]):
            async def process(self, jobs: list[Job]) -> object:
                failures = await post_all(jobs)
                return ChunkResult(failed={job_id: err for job_id, err in failures})
    """

    #: How this worker's jobs are grouped into chunks.
    chunk: ChunkOptions = ChunkOptions()

    def __init_subclass__(
        cls,
        *,
        size: int | None = None,
        timeout: float | None = None,
        by: Sequence[str] | None = None,
        run_timeout: float | None = None,
        abstract: bool = False,
        **kwargs: Any,
    ) -> None:
        # (checked before `Worker` registers the class: an invalid worker is never known)
        base = cls.chunk
        chunk = ChunkOptions(
            size=base.size if size is None else _check_size(size),
            timeout=base.timeout if timeout is None else _check_wait(timeout),
            by=base.by if by is None else _check_by(by),
        )
        if run_timeout is not None:
            kwargs["timeout"] = _check_run_timeout(run_timeout)  # the Worker's run limit
        if not abstract and not inspect.iscoroutinefunction(cls.process):
            raise ConfigError(
                f"chunk worker {cls.__qualname__} must define `async def process(self, jobs)`"
            )
        super().__init_subclass__(abstract=abstract, **kwargs)
        cls.chunk = chunk

    def process(self, jobs: list[Job]) -> Awaitable[object]:  # type: ignore[override]
        """Run a chunk of jobs. Return None (or any value) to complete them all, a
        `ChunkResult` to fail, snooze or cancel some of them, `Snooze(s)` or `Cancel(r)`
        for all of them; raise to fail them all."""
        raise NotImplementedError(f"{type(self).__qualname__} must define process(jobs)")


def chunk_worker(
    func: Callable[[list[Job]], Awaitable[object]] | None = None,
    *,
    size: int | None = None,
    timeout: float | None = None,
    by: Sequence[str] | None = None,
    run_timeout: float | None = None,
    queue: str | None = None,
    max_attempts: int | None = None,
    priority: int | None = None,
    tags: Sequence[str] | None = None,
    unique: object = None,
    name: str | None = None,
) -> Any:
    """Make a chunk worker of `async def f(jobs: list[Job])`; options as `ChunkWorker`.

    Example:
        @chunk_worker(queue="events", size=500, timeout=2.0)
        async def store_events(jobs: list[Job]) -> None:
            await bulk_insert([job.args for job in jobs])

        await app.insert(store_events.new({"kind": "click"}))
    """

    def wrap(fn: Callable[[list[Job]], Awaitable[object]]) -> ChunkWorker:
        if not inspect.iscoroutinefunction(fn):
            raise ConfigError(f"@chunk_worker needs an async function of the jobs, got {fn!r}")
        qualname = getattr(fn, "__qualname__", getattr(fn, "__name__", "chunk_worker"))

        async def process(self: ChunkWorker, jobs: list[Job]) -> object:
            return await fn(jobs)

        def call(self: ChunkWorker, jobs: list[Job]) -> Awaitable[object]:
            return fn(jobs)

        namespace = {
            "process": process, "__call__": call, "__doc__": fn.__doc__,
            # (the stored name is derived from these, as for a function worker)
            "__module__": fn.__module__, "__qualname__": qualname,
        }  # fmt: skip
        options = {
            "queue": queue, "max_attempts": max_attempts, "priority": priority,
            "tags": tags, "unique": unique,
        }  # fmt: skip
        cls = type(getattr(fn, "__name__", "chunk_worker"), (ChunkWorker,), namespace,
                   size=size, timeout=timeout, by=by, run_timeout=run_timeout, name=name,
                   **options)  # fmt: skip
        made: ChunkWorker = cls()
        return made

    return wrap(func) if func is not None else wrap


def chunk_worker_of(name: str) -> ChunkWorker | None:
    """The chunk worker stored as `name`, if this process has it (loaded, or defined by
    a module already imported), else None: never imports, so the loop may ask it for
    every fetched job. (A job whose worker's module is not imported yet runs through the
    executor, which imports it off the loop and runs it as a chunk of one.)"""
    found = loaded_worker(name)
    if found is None:
        target = _REGISTRY.get(name)
        if not isinstance(target, ChunkWorker) and not (
            isinstance(target, type) and issubclass(target, ChunkWorker)
        ):
            return None
        try:
            found = resolve_worker(name)  # registered: built here, no import
        except Exception:  # its constructor failed: the executor reports it on the job
            return None
    return found if isinstance(found, ChunkWorker) else None
