"""Workers: the code that runs a job, declared as a class or a decorated function.

A worker's stored name is its importable dotted path (`pkg.module.QualName`), so any
node that can import the module can run its jobs; names resolve lazily on first use.
A worker defined in the script being run (`__main__`) gets the module name the script
also has (`python -m pkg.mod`, or a file under another `sys.path` entry); failing that,
its name keeps `__main__.` and `check_main_workers` refuses to insert its jobs.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import keyword
import sys
import threading
import time
import types
from collections.abc import Awaitable, Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from kerrera.core.backoff import default_backoff
from kerrera.core.chain import Chain, stamp_chain
from kerrera.core.errors import ConfigError, UnknownWorkerError
from kerrera.core.job import Job, JobState
from kerrera.core.options import (
    check_json_object,
    check_max_attempts,
    check_priority,
    check_queue,
    check_schedule,
    check_tags,
    check_timeout,
)
from kerrera.core.typed_args import (
    ArgsModel,
    from_signature,
    takes_args,
    typed_function,
    typed_method,
)
from kerrera.core.unique import Unique


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """Defaults a worker gives the jobs it builds, validated when the worker is defined."""

    queue: str = "default"
    max_attempts: int = 20
    priority: int = 0
    tags: tuple[str, ...] = ()
    timeout: float | None = None
    unique: Unique | None = None
    args: ArgsModel | None = None
    chain: Chain | None = None

    @classmethod
    def build(cls, base: WorkerOptions, **given: Any) -> WorkerOptions:
        """Apply the options given (None means inherit) on top of `base`, validating each."""
        checked: dict[str, Any] = {}
        if given.get("queue") is not None:
            checked["queue"] = check_queue(given["queue"])
        if given.get("max_attempts") is not None:
            checked["max_attempts"] = check_max_attempts(given["max_attempts"])
        if given.get("priority") is not None:
            checked["priority"] = check_priority(given["priority"])
        if given.get("tags") is not None:
            checked["tags"] = tuple(check_tags(given["tags"]))
        if "timeout" in given and given["timeout"] is not _INHERIT:
            checked["timeout"] = check_timeout(given["timeout"])
        if given.get("unique") is not None:
            checked["unique"] = Unique.coerce(given["unique"])
        if given.get("args") is not None:
            checked["args"] = ArgsModel.coerce(given["args"])
        if given.get("chain") is not None:
            checked["chain"] = Chain.coerce(given["chain"])
        return replace(base, **checked)


_INHERIT: Any = object()
_REGISTRY: dict[str, type[Worker] | Worker] = {}
_INSTANCES: dict[str, Worker] = {}
_LOCK = threading.Lock()


class _ClassOrInstanceMethod:
    """Binds to the instance when there is one, else to the class (for `new`)."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        self.__doc__ = func.__doc__

    def __get__(self, obj: object, owner: type) -> Callable[..., Any]:
        return types.MethodType(self.func, owner if obj is None else obj)


class Worker:
    """Base class of class-based workers.

    Options are given as class keywords and inherited by subclasses:
    `queue` ("default"), `max_attempts` (20), `priority` (0, first, to 9), `tags` (()),
    `timeout` (None: no limit, seconds otherwise), `unique` (None; see `Unique`: True, a
    period in seconds, a dict of options or a `Unique`), `args` (a pydantic model or a
    dataclass: `new()` validates args with it, and `process(self, job, args)` receives
    the typed object), `chain` (None; True, a dict or a `Chain`: jobs of one partition
    run one at a time, in insertion order), `name` (the dotted path), `abstract` (True
    for a base class that only shares options and is never run itself).
    One instance per node runs every job of the worker: keep no per-job state on `self`.

    Example:
        class Analyse(Worker, queue="analysis", max_attempts=3):
            async def process(self, job: Job) -> object:
                return Record(await analyse(job.args["track_id"]))

            def backoff(self, job: Job) -> float:
                return 5 * job.attempt
    """

    #: The options this worker gives the jobs it builds.
    options: WorkerOptions = WorkerOptions()
    #: The name stored in the `worker` column: an importable dotted path.
    name: str = "kerrera.Worker"
    #: Whether `process` is a coroutine function (runs on the loop) or sync (thread pool).
    is_async: bool = True

    def __init_subclass__(
        cls,
        *,
        queue: str | None = None,
        max_attempts: int | None = None,
        priority: int | None = None,
        tags: Sequence[str] | None = None,
        timeout: float | None = _INHERIT,
        unique: object = None,
        args: object = None,
        chain: object = None,
        name: str | None = None,
        abstract: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if abstract:  # a base for other workers, never run itself
            return
        cls.options = WorkerOptions.build(
            cls.options, queue=queue, max_attempts=max_attempts, priority=priority,
            tags=tags, timeout=timeout, unique=unique, chain=chain,
            args=args if args is not None else from_signature(cls.process, skip=1),
        )  # fmt: skip
        cls.name = _check_name(name or default_name(cls.__module__, cls.__qualname__))
        cls.is_async = inspect.iscoroutinefunction(cls.process)
        model = cls.options.args
        if model is not None and takes_args(cls.process, skip=1):
            cls.process = typed_method(cls.process, model, cls.name, cls.is_async)  # type: ignore[method-assign]
        _register(cls.name, cls)

    def process(self, job: Job) -> Awaitable[object] | object:
        """Run the job. Return None or a value to complete it, `Record(v)` to keep a
        value, `Snooze(s)` to run again later, `Cancel(reason)` to cancel; raise to fail
        (the job is retried with `backoff` until `max_attempts` is spent)."""
        raise NotImplementedError(f"{type(self).__qualname__} must define process(job)")

    def backoff(self, job: Job) -> float:
        """Seconds to wait before the next attempt after `job.attempt` failed."""
        return default_backoff(job.attempt, job.max_attempts)

    def timeout(self, job: Job) -> float | None:
        """Seconds the job may run before it fails with a timeout (None: no limit)."""
        return self.options.timeout

    @_ClassOrInstanceMethod
    def new(
        self_or_cls: Any,
        args: Mapping[str, Any] | Any | None = None,
        *,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        tags: Sequence[str] | None = None,
        meta: Mapping[str, Any] | None = None,
        scheduled_at: datetime | None = None,
        schedule_in: float | None = None,
        unique: object = None,
    ) -> Job:
        """Build an unsaved job for this worker; options default to the worker's.

        `unique` overrides the worker's (False: not unique for this job).

        Example: `job = await app.insert(Analyse.new({"n": 1}, schedule_in=30))`.
        """
        opts: WorkerOptions = self_or_cls.options
        when, delay = check_schedule(scheduled_at, schedule_in)
        if opts.args is not None:  # validated and stored as plain JSON
            args = opts.args.dump({} if args is None else args, self_or_cls.name)
        return Job(
            state=JobState.SCHEDULED if (when or delay) else JobState.AVAILABLE,
            queue=opts.queue if queue is None else check_queue(queue),
            worker=self_or_cls.name,
            args=check_json_object({} if args is None else args, "args"),
            max_attempts=opts.max_attempts
            if max_attempts is None
            else check_max_attempts(max_attempts),
            priority=opts.priority if priority is None else check_priority(priority),
            tags=list(opts.tags) if tags is None else check_tags(tags),
            # A copy: the job's meta is written to (unique keys, trace context, progress),
            # and the caller's dict, perhaps shared by many jobs, must not change with it.
            meta=stamp_chain(
                opts.chain,
                self_or_cls.name,
                args,
                dict(check_json_object({} if meta is None else meta, "meta")),
            ),
            scheduled_at=when,
            schedule_in=delay,
            unique=opts.unique if unique is None else Unique.coerce(unique),
        )


class FunctionWorker(Worker, abstract=True):
    """A worker made from a function by `@worker(...)`; call it like the function."""

    def __init__(self, func: Callable[[Job], Any], options: WorkerOptions, name: str) -> None:
        self.func = func
        self.options = options
        self.name = name
        self.is_async = inspect.iscoroutinefunction(func)
        self.__doc__ = func.__doc__
        self.__wrapped__ = func
        # Bind the right flavour of `process` once, so dispatch costs a single call.
        self.process = func  # type: ignore[method-assign,assignment]
        model = options.args
        if model is not None and takes_args(func):
            self.process = typed_function(func, model, name)  # type: ignore[method-assign,assignment]

    def __call__(self, job: Job) -> Any:
        return self.func(job)

    def __repr__(self) -> str:
        return f"<worker {self.name} queue={self.options.queue!r}>"


def worker(
    func: Callable[[Job], Any] | None = None,
    *,
    queue: str | None = None,
    max_attempts: int | None = None,
    priority: int | None = None,
    tags: Sequence[str] | None = None,
    timeout: float | None = None,
    unique: object = None,
    args: object = None,
    chain: object = None,
    name: str | None = None,
) -> Any:
    """Make a worker of a function taking the job (async def, or def for a thread pool).

    A function `(job, args: Model)` whose second parameter is annotated with a pydantic
    model or a dataclass (or given `args=Model`) gets its args validated by `new()` and
    receives them as that model.

    Example:
        @worker(queue="media", max_attempts=5, timeout=600)
        async def separate_stems(job: Job) -> None: ...

        await app.insert(separate_stems.new({"track_id": 7}))
    """

    def wrap(fn: Callable[[Job], Any]) -> FunctionWorker:
        if not callable(fn):
            raise ConfigError(f"@worker needs a function, got {fn!r}")
        options = WorkerOptions.build(
            WorkerOptions(), queue=queue, max_attempts=max_attempts, priority=priority,
            tags=tags, timeout=timeout, unique=unique, chain=chain,
            args=args if args is not None else from_signature(fn),
        )  # fmt: skip
        qualname = getattr(fn, "__qualname__", getattr(fn, "__name__", "worker"))
        full = _check_name(name or default_name(fn.__module__, qualname))
        made = FunctionWorker(fn, options, full)
        _register(full, made)
        return made

    return wrap(func) if func is not None else wrap


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= 127:
        raise ConfigError(f"option 'name' must be 1..127 characters, got {name!r}")
    return name


MAIN_PREFIX = "__main__."


def default_name(module: str, qualname: str) -> str:
    """The stored name of a worker defined in `module`: `module.qualname`, except that a
    worker of the script being run (`__main__`) gets the script's importable module name
    when there is one (see `main_module_name`), since no other process has that
    `__main__`."""
    if module == "__main__":
        module = main_module_name() or module
    return f"{module}.{qualname}"


def main_module_name() -> str | None:
    """The name under which another process can import the running `__main__`, or None.

    Known when Python was started as `python -m pkg.mod` (`__spec__.name`), or when the
    script file lies under a `sys.path` entry other than its own folder (a package
    installed or on PYTHONPATH). The script's own folder does not count: Python adds it
    for this process only, and a node importing the script by that name would run its
    top-level code (often the very insert) again.
    """
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    file = getattr(main, "__file__", None)
    if spec is not None and spec.name is not None:
        name: str | None = str(spec.name)
    elif file and file.endswith(".py"):
        name = _module_of_file(Path(file).resolve())
    else:
        return None  # `python -c`, the REPL, a notebook, stdin: nothing to import
    # `python -m pkg` runs pkg/__main__.py, whose top level is the program itself: a
    # node must not import that, so such a worker stays unresolved.
    if name is None or name.split(".")[-1] == "__main__":
        return None
    return name


def _module_of_file(path: Path) -> str | None:
    entries = list(sys.path)
    if entries and not sys.flags.safe_path and _same_dir(entries[0], path.parent):
        entries = entries[1:]  # the script's own folder, added for this process only
    found: list[str] = []
    for entry in entries:
        try:
            relative = path.relative_to(Path(entry or ".").resolve())
        except (ValueError, OSError):
            continue
        parts = relative.with_suffix("").parts
        if parts and all(p.isidentifier() and not keyword.iskeyword(p) for p in parts):
            found.append(".".join(parts))
    return min(found, key=len) if found else None  # the closest entry: `app.t`, not `src.app.t`


def _same_dir(entry: str, folder: Path) -> bool:
    try:
        return Path(entry or ".").resolve() == folder
    except OSError:
        return False


def check_main_workers(jobs: Iterable[Job], runs_here: Container[str]) -> None:
    """Refuse jobs of a worker that only this process's `__main__` can run.

    Such a name (`__main__.hello`) means nothing to another node: its jobs would fail
    there as an unknown worker. They are let through only for a queue in `runs_here`,
    the queues a node in this very process serves (a script that starts its own node).
    A script that runs in both roles, inserting in one process and serving in another,
    names its workers (`@worker(name="myscript.hello")`): an explicit name is never
    `__main__.`-prefixed, and each run of the script registers it.
    """
    for job in jobs:
        if job.worker.startswith(MAIN_PREFIX) and job.queue not in runs_here:
            short = job.worker.removeprefix(MAIN_PREFIX)
            raise ConfigError(
                f"worker {job.worker!r} is defined in the script being run (__main__):"
                f" no other process can import it, so no node could run its jobs. Move"
                f" {short} into a module, e.g. tasks.py, and import it from there (nodes:"
                f" --module tasks), or run the script as `python -m pkg.module`. (Only a"
                f" node in this process serving queue {job.queue!r} could run it as is; a"
                f" script whose own runs are the nodes can give it a name, e.g."
                f" name='myscript.{short}')"
            )


def _register(name: str, target: type[Worker] | Worker) -> None:
    with _LOCK:
        _REGISTRY[name] = target
        _INSTANCES.pop(name, None)


#: Seconds a name that failed to import is remembered as unknown: a queue full of jobs
#: whose worker is missing must not search `sys.path` again for every one of them, and a
#: deploy that adds the module is picked up soon after.
FAILED_IMPORT_TTL = 30.0
_FAILED: dict[str, tuple[float, str]] = {}  # name -> (when it failed, the error message)
_IMPORTING: dict[str, threading.Lock] = {}  # name -> held while it is being imported


def loaded_worker(name: str) -> Worker | None:
    """The worker of `name` if it is already loaded (no import, no await: the hot path
    asks this first and calls `load_worker` only on a miss)."""
    return _INSTANCES.get(name)


async def load_worker(name: str) -> Worker:
    """`resolve_worker` for the event loop: a worker already loaded is returned at once;
    importing a module (which may be slow, or block) runs in a thread, so that other
    jobs, heartbeats and acks go on meanwhile."""
    found = _INSTANCES.get(name)
    if found is not None:
        return found
    return await asyncio.to_thread(resolve_worker, name)


def resolve_worker(name: str) -> Worker:
    """Return the worker instance for a stored name, importing its module if needed.

    Raises `UnknownWorkerError` when the name cannot be imported or is not a worker (a
    failed import is remembered for `FAILED_IMPORT_TTL` seconds).
    """
    found = _INSTANCES.get(name)
    if found is not None:
        return found
    target = _REGISTRY.get(name) or _import_remembering_failure(name)
    instance = target() if isinstance(target, type) else target
    with _LOCK:
        _INSTANCES[name] = instance
    return instance


def _import_remembering_failure(name: str) -> type[Worker] | Worker:
    with _LOCK:
        importing = _IMPORTING.setdefault(name, threading.Lock())
    with importing:  # jobs of one name that arrive together wait for one import
        failed = _FAILED.get(name)
        if failed is not None and time.monotonic() - failed[0] < FAILED_IMPORT_TTL:
            raise UnknownWorkerError(failed[1])
        try:
            return _import_target(name)
        except UnknownWorkerError as exc:
            _FAILED[name] = (time.monotonic(), str(exc))
            raise


def _import_target(name: str) -> type[Worker] | Worker:
    parts = name.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
                continue  # this prefix is not a module: try a shorter one
            raise UnknownWorkerError(f"unknown worker {name!r}: {exc}") from exc
        except Exception as exc:  # the module exists but failed to import
            raise UnknownWorkerError(
                f"unknown worker {name!r}: importing {module_name} failed: {exc!r}"
            ) from exc
        if name in _REGISTRY:  # importing the module defined it
            return _REGISTRY[name]
        for attr in parts[split:]:
            obj = getattr(obj, attr, None)
        if isinstance(obj, Worker) or (isinstance(obj, type) and issubclass(obj, Worker)):
            return obj
        raise UnknownWorkerError(
            f"unknown worker {name!r}: {module_name} has no worker {'.'.join(parts[split:])}"
        )
    raise UnknownWorkerError(f"unknown worker {name!r}: no importable module in that name")
