"""Workflows: jobs that run when the jobs they depend on have completed (a durable DAG).

A `Workflow` is built in memory, checked as it is built (duplicate names, unknown or
self dependencies: since a step can only depend on steps added before it, no cycle can
be formed), then inserted in one transaction with `await app.insert(wf)`. Each step is
an ordinary row of `oban_jobs`; what makes it a step lives in its `meta`:

- `workflow_id`, `workflow_name`, `name`, `deps`: as Oban Pro names them;
- `ignore_cancelled`, `ignore_discarded`, `ignore_deleted`: as Oban Pro names them,
  present only when true;
- `announces`: every name a dependent can wait on that this job counts toward (its own
  name, its `add_many` group, the sub-workflows it belongs to, the graft it came from);
- `cascade` (the function a cascade step calls) and `graft` (a step that may graft).

A step with dependencies is inserted `suspended`. The engine's trigger releases it in the
transaction that finishes its last dependency (see `kerrera.engine.migrations.workflows`).

Example:
    wf = Workflow(name="track")
    wf.add("download", download.new({"url": url}))
    wf.add_many("stems", [separate.new({"stem": s}) for s in STEMS], deps=["download"])
    wf.add("analyse", analyse.new({}), deps=["stems"])
    await app.insert(wf)
"""

from __future__ import annotations

import importlib
import inspect
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from kerrera.core.errors import ConfigError
from kerrera.core.job import Job, JobState
from kerrera.core.options import check_json_object

if TYPE_CHECKING:
    pass

#: Outcomes of a dependency that, unless ignored, cancel the steps waiting on it.
FAILURES = ("cancelled", "discarded", "deleted")
_NAME_RE = re.compile(r"^[A-Za-z0-9_\-:/ ]{1,100}$")


def check_step_name(name: object, what: str = "step name") -> str:
    """`name` if it can name a workflow step (no dots), else `ConfigError`."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(
            f"workflow {what} must be 1-100 letters, digits, spaces or _-:/ "
            f"(no dots: they join group and sub-workflow names), got {name!r}"
        )
    return name


@dataclass(slots=True)
class Step:
    """One job of a workflow, as built: its full name, the names it waits on and the
    names it counts toward."""

    name: str
    job: Job
    deps: tuple[str, ...]
    announces: tuple[str, ...]
    ignore: tuple[str, ...] = ()
    #: A graft step may add steps while it runs (`job.workflow.graft(...)`).
    graft: bool = False


@dataclass(slots=True)
class WorkflowPlan:
    """What the engine inserts: the steps in order, how many dependency jobs each waits
    for (0: it runs at once), and the workflow row."""

    workflow_id: str
    name: str | None
    context: dict[str, Any]
    jobs: list[Job]
    pending: list[int]
    deps: list[list[str]]
    ignore: list[list[str]]


class Workflow:
    """A graph of jobs: each step runs once every step it depends on has completed.

    `ignore_cancelled` / `ignore_discarded` / `ignore_deleted` set the default for every
    step: whether it still runs when a dependency was cancelled, discarded or deleted
    (by default it is cancelled too, and so are the steps after it).
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        workflow_id: str | None = None,
        ignore_cancelled: bool = False,
        ignore_discarded: bool = False,
        ignore_deleted: bool = False,
    ) -> None:
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ConfigError(f"option 'name' must be a non-empty string, got {name!r}")
        if workflow_id is not None and (
            not isinstance(workflow_id, str) or not 0 < len(workflow_id) <= 200
        ):
            raise ConfigError(
                f"option 'workflow_id' must be a string of 1-200 characters, got {workflow_id!r}"
            )
        self.name = name
        self.id = workflow_id or str(uuid.uuid4())
        self.context: dict[str, Any] = {}
        self._default_ignore = _ignore_list(ignore_cancelled, ignore_discarded, ignore_deleted)
        self._steps: list[Step] = []
        #: every name a dependency may refer to -> the number of jobs that count toward it
        self._counts: dict[str, int] = {}

    # -- building ---------------------------------------------------------------------------
    @property
    def steps(self) -> list[Step]:
        """The steps in the order they were added (sub-workflows flattened)."""
        return list(self._steps)

    def names(self) -> list[str]:
        """Every name a dependency may refer to: steps, groups, sub-workflows, grafts."""
        return list(self._counts)

    def put_context(self, values: Mapping[str, Any]) -> Workflow:
        """Add JSON values every step can read (`await job.workflow.context()`)."""
        self.context.update(check_json_object(values, "context"))
        return self

    def add(
        self,
        name: str,
        job: Job,
        deps: Iterable[str] = (),
        *,
        ignore_cancelled: bool | None = None,
        ignore_discarded: bool | None = None,
        ignore_deleted: bool | None = None,
    ) -> Workflow:
        """Add the step `name`, which runs `job` once every step in `deps` completed."""
        name = self._new_name(name)
        ignore = self._ignore(ignore_cancelled, ignore_discarded, ignore_deleted)
        self._append(name, job, self._check_deps(name, deps), (name,), ignore)
        return self

    def add_many(
        self,
        name: str,
        jobs: Sequence[Job] | Mapping[str, Job],
        deps: Iterable[str] = (),
        *,
        ignore_cancelled: bool | None = None,
        ignore_discarded: bool | None = None,
        ignore_deleted: bool | None = None,
    ) -> Workflow:
        """Add a fan-out group: every job runs after `deps`; a step that depends on `name`
        waits for all of them. Members are named `name.0`, `name.1`, ... (or `name.key`
        for a mapping)."""
        name = self._new_name(name)
        group = members(jobs)
        if not group:
            raise ConfigError(f"add_many({name!r}) needs at least one job")
        checked = self._check_deps(name, deps)
        ignore = self._ignore(ignore_cancelled, ignore_discarded, ignore_deleted)
        self._counts[name] = 0
        for key, job in group:
            member = f"{name}.{check_step_name(key, 'group member key')}"
            self._append(member, job, checked, (member, name), ignore)
        return self

    def add_workflow(self, name: str, sub: Workflow, deps: Iterable[str] = ()) -> Workflow:
        """Add the steps of `sub` under `name` (`name.step`): its first steps wait for
        `deps`, and a step that depends on `name` waits for all of them. `sub`'s context
        is kept under `context[name]`."""
        name = self._new_name(name)
        if sub is self or not isinstance(sub, Workflow):
            raise ConfigError("add_workflow needs another Workflow")
        if not sub._steps:
            raise ConfigError(f"sub-workflow {name!r} has no steps")
        outer = self._check_deps(name, deps)
        self._counts[name] = 0
        for step in sub._steps:
            inner = tuple(f"{name}.{d}" for d in step.deps)
            self._append(
                f"{name}.{step.name}",
                step.job,
                inner if step.deps else outer,
                (*(f"{name}.{a}" for a in step.announces), name),
                step.ignore,
                graft=step.graft,
            )
        for inner_name in sub._counts:
            self._counts.setdefault(f"{name}.{inner_name}", sub._counts[inner_name])
        if sub.context:
            if name in self.context:
                raise ConfigError(
                    f"sub-workflow {name!r} has a context, kept under context[{name!r}], "
                    "which the workflow's own context already uses"
                )
            self.context[name] = dict(sub.context)
        return self

    def add_cascade(
        self,
        name: str,
        fn: Callable[..., Any],
        deps: Iterable[str] = (),
        *,
        queue: str | None = None,
        ignore_cancelled: bool | None = None,
        ignore_discarded: bool | None = None,
        ignore_deleted: bool | None = None,
    ) -> Workflow:
        """Add a step that calls `fn(context, results)`: the workflow's context and the
        recorded results of its dependencies (`{step name: value}`); a function of one
        parameter gets both in one dict (results win over context keys of the same
        name). What `fn` returns (sync or async) is recorded as this step's result. `fn`
        must be importable by name (a module-level function, not a lambda or a function
        of `__main__`)."""
        path = function_path(fn)
        from kerrera.core.cascade import Cascade  # (the worker that runs it)

        job = Cascade.new({"fn": path}, queue=queue)
        job.meta["cascade"] = path
        return self.add(
            name, job, deps, ignore_cancelled=ignore_cancelled,
            ignore_discarded=ignore_discarded, ignore_deleted=ignore_deleted,
        )  # fmt: skip

    def add_graft(
        self,
        name: str,
        job: Job,
        deps: Iterable[str] = (),
        *,
        ignore_cancelled: bool | None = None,
        ignore_discarded: bool | None = None,
        ignore_deleted: bool | None = None,
    ) -> Workflow:
        """Add a step that may add more steps while it runs (`await job.workflow.graft(
        jobs)`); a step that depends on `name` waits for the graft step and for every
        job it grafted."""
        self.add(
            name, job, deps, ignore_cancelled=ignore_cancelled,
            ignore_discarded=ignore_discarded, ignore_deleted=ignore_deleted,
        )  # fmt: skip
        self._steps[-1].graft = True
        return self

    # -- output -------------------------------------------------------------------------------
    def plan(self) -> WorkflowPlan:
        """The jobs to insert, with their workflow meta and their dependency counts."""
        if not self._steps:
            raise ConfigError("a workflow needs at least one step")
        jobs: list[Job] = []
        pending: list[int] = []
        deps: list[list[str]] = []
        ignores: list[list[str]] = []
        for step in self._steps:
            job = step.job
            meta = {
                **job.meta,
                "workflow_id": self.id,
                "name": step.name,
                "deps": list(step.deps),
                "announces": list(step.announces),
            }
            if self.name is not None:
                meta["workflow_name"] = self.name
            for outcome in step.ignore:
                meta[f"ignore_{outcome}"] = True
            if step.graft:
                meta["graft"] = True
            waits = sum(self._counts[d] for d in step.deps)
            state = JobState.SUSPENDED if waits else job.state
            jobs.append(replace(job, meta=meta, state=state, unique=None))
            pending.append(waits)
            deps.append(list(step.deps))
            ignores.append(list(step.ignore))
        return WorkflowPlan(self.id, self.name, dict(self.context), jobs, pending, deps, ignores)

    def to_mermaid(self) -> str:
        """The graph as a Mermaid flowchart: groups and sub-workflows as (nested)
        subgraphs, an arrow from a group when a step depends on all of it."""
        ids = {step.name: f"s{i}" for i, step in enumerate(self._steps)}
        groups: dict[str, str] = {}  # group name -> subgraph id (numbered: names may clash)
        tree: dict[str, list[str]] = {"": []}  # group -> its subgroups, in order
        members: dict[str, list[Step]] = {"": []}
        for step in self._steps:
            # a step's groups, outermost first (`announces` lists them innermost first)
            outer = [a for a in reversed(step.announces) if a != step.name]
            parent = ""
            for group in outer:
                if group not in groups:
                    groups[group] = f"g{len(groups)}"
                    tree.setdefault(parent, []).append(group)
                    tree[group] = []
                    members[group] = []
                parent = group
            members[parent].append(step)
        lines = ["flowchart TD"]

        def draw(group: str, depth: int) -> None:
            pad = "    " * depth
            for step in members[group]:
                label = _mermaid_text(f"{step.name}: {step.job.worker.rsplit('.', 1)[-1]}")
                lines.append(f'{pad}{ids[step.name]}["{label}"]')
            for sub in tree[group]:
                lines.append(f'{pad}subgraph {groups[sub]}["{_mermaid_text(sub)}"]')
                draw(sub, depth + 1)
                lines.append(f"{pad}end")

        draw("", 1)
        for step in self._steps:
            for dep in step.deps:
                source = ids.get(dep) or groups.get(dep)
                if source is not None:
                    lines.append(f"    {source} --> {ids[step.name]}")
        return "\n".join(lines)

    # -- internals ----------------------------------------------------------------------------
    def _new_name(self, name: str) -> str:
        name = check_step_name(name)
        if name in self._counts:
            raise ConfigError(f"workflow step {name!r} is already defined")
        return name

    def _check_deps(self, name: str, deps: Iterable[str]) -> tuple[str, ...]:
        if isinstance(deps, str):
            deps = [deps]
        out: list[str] = []
        for dep in deps:
            if dep == name:
                raise ConfigError(f"workflow step {name!r} cannot depend on itself")
            if dep not in self._counts:
                known = ", ".join(sorted(self._counts)) or "none yet"
                raise ConfigError(
                    f"workflow step {name!r} depends on {dep!r}, which is not defined "
                    f"(steps must be added after what they depend on; defined: {known})"
                )
            if dep not in out:
                out.append(dep)
        return tuple(out)

    def _ignore(self, cancelled: bool | None, discarded: bool | None,
                deleted: bool | None) -> tuple[str, ...]:  # fmt: skip
        d = self._default_ignore
        return _ignore_list(
            "cancelled" in d if cancelled is None else cancelled,
            "discarded" in d if discarded is None else discarded,
            "deleted" in d if deleted is None else deleted,
        )

    def _append(
        self, name: str, job: Job, deps: tuple[str, ...], announces: tuple[str, ...],
        ignore: tuple[str, ...], *, graft: bool = False,
    ) -> None:  # fmt: skip
        if not isinstance(job, Job) or job.id is not None:
            raise ConfigError(f"workflow step {name!r} needs an unsaved job (Worker.new())")
        if job.unique is not None:
            raise ConfigError(f"workflow step {name!r}: unique jobs cannot be workflow steps")
        if name in self._counts and name not in announces[1:]:
            raise ConfigError(f"workflow step {name!r} is already defined")
        self._steps.append(Step(name, job, deps, announces, ignore, graft))
        for announced in announces:
            self._counts[announced] = self._counts.get(announced, 0) + 1


def _ignore_list(cancelled: bool, discarded: bool, deleted: bool) -> tuple[str, ...]:
    flags = {"cancelled": cancelled, "discarded": discarded, "deleted": deleted}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise ConfigError(f"option 'ignore_{key}' must be True or False, got {value!r}")
    return tuple(k for k, v in flags.items() if v)


def members(jobs: Sequence[Job] | Mapping[str, Job]) -> list[tuple[str, Job]]:
    """(key, job) pairs of a list (keys 0, 1, ...) or a mapping of jobs."""
    if isinstance(jobs, Mapping):
        return [(str(k), v) for k, v in jobs.items()]
    if isinstance(jobs, str | bytes) or not isinstance(jobs, Iterable):
        raise ConfigError("add_many needs a list of jobs or a mapping of key -> job")
    return [(str(i), job) for i, job in enumerate(jobs)]


def _mermaid_text(text: str) -> str:
    return text.replace('"', "'")


def function_path(fn: Callable[..., Any]) -> str:
    """`module:qualname` of a module-level function, checked to resolve back to it."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if not callable(fn) or not module or not qualname or "<" in qualname:
        raise ConfigError(
            f"a cascade needs a module-level function, got {fn!r} (lambdas and nested "
            "functions cannot be found by the node that runs the step)"
        )
    if module == "__main__":
        raise ConfigError(
            f"cascade function {qualname} is defined in __main__, which the node that runs "
            "the step cannot import: move it into a module (e.g. tasks.py) and import it"
        )
    if resolve_function(f"{module}:{qualname}") is not fn:
        raise ConfigError(f"cascade function {module}:{qualname} does not resolve to itself")
    return f"{module}:{qualname}"


def resolve_function(path: str) -> Callable[..., Any]:
    """The function `module:qualname` names."""
    module_name, _, qualname = path.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{path} is not callable")
    return target  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class WorkflowStep:
    """What a running job knows of its workflow (`job.workflow`): the ids and names from
    its meta, and reads of the workflow through the node running it."""

    id: str
    name: str | None
    step: str
    deps: tuple[str, ...] = field(default=())
    announces: tuple[str, ...] = field(default=())
    job_id: int | None = None

    async def context(self) -> dict[str, Any]:
        """The workflow's context (`Workflow.put_context`)."""
        context: dict[str, Any] = await _app().workflow(self.id).context()
        return context

    async def results(self, names: Iterable[str] | None = None) -> dict[str, Any]:
        """The recorded results (`Record(value)`) of this step's dependencies, or of the
        steps `names`, by step name (members of a group under their own names)."""
        wanted = list(self.deps) if names is None else list(names)
        results: dict[str, Any] = await _app().workflow(self.id).results(wanted)
        return results

    async def jobs(self, *, only_deps: bool = True) -> list[Job]:
        """The jobs of this step's dependencies (or of the whole workflow)."""
        handle = _app().workflow(self.id)
        jobs: list[Job] = await handle.jobs(names=list(self.deps) if only_deps else None)
        return jobs

    async def graft(self, jobs: Sequence[Job] | Mapping[str, Job]) -> list[Job]:
        """From a graft step (`add_graft`): add `jobs` to the workflow; every step that
        waits on this one waits for them too. Grafting twice is refused (a retried
        graft step gets back the jobs it grafted the first time)."""
        grafted: list[Job] = await _app().workflow(self.id).graft(self, jobs)
        return grafted

    def context_sync(self) -> dict[str, Any]:
        """`context()` for a sync worker (it runs in a thread)."""
        context: dict[str, Any] = _in_app_loop(self.context)
        return context

    def results_sync(self, names: Iterable[str] | None = None) -> dict[str, Any]:
        """`results()` for a sync worker."""
        results: dict[str, Any] = _in_app_loop(lambda: self.results(names))
        return results

    def graft_sync(self, jobs: Sequence[Job] | Mapping[str, Job]) -> list[Job]:
        """`graft()` for a sync worker."""
        grafted: list[Job] = _in_app_loop(lambda: self.graft(jobs))
        return grafted


def _in_app_loop(make: Callable[[], Any]) -> Any:
    """Run a coroutine of the app on its event loop from a worker's thread, and wait."""
    import asyncio

    app = _app()
    loop = getattr(app, "loop", None)
    if loop is None:
        raise RuntimeError("the app running this job has no event loop")
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run_coroutine_threadsafe(make(), loop).result()
    raise RuntimeError("call the async method (await job.workflow...) in an async worker")


def step_of(job: Job) -> WorkflowStep | None:
    """The workflow view of `job` (None when it is not a workflow step)."""
    meta = job.meta
    wf = meta.get("workflow_id") if meta else None
    if not isinstance(wf, str):
        return None
    name = meta.get("name")
    return WorkflowStep(
        id=wf,
        name=meta.get("workflow_name"),
        step=name if isinstance(name, str) else "",
        deps=tuple(meta.get("deps") or ()),
        announces=tuple(str(a) for a in meta.get("announces") or (name,)),
        job_id=job.id,
    )


def _app() -> Any:
    from kerrera.core.context import current_app

    return current_app()


def call_cascade(fn: Callable[..., Any], context: dict[str, Any], results: dict[str, Any]) -> Any:
    """Call a cascade function with what it takes: `(context, results)`, one dict of
    both (results win over context keys of the same name), or nothing."""
    params = [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(params) >= 2:
        return fn(context, results)
    if len(params) == 1:
        return fn({**context, **results})
    return fn()
