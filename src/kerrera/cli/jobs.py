"""`kerrera jobs`: list, show, retry, cancel and delete jobs."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kerrera.app.inspect import act_on_ids
from kerrera.cli._render import Output, job_dict, progress, state_cell, when
from kerrera.core import codec
from kerrera.core.errors import ConfigError
from kerrera.core.job import Job

if TYPE_CHECKING:
    from kerrera.app.facade import Kerrera

#: Each management action and how its result is told ("retried 3 jobs").
ACTIONS = {"retry": "retried", "cancel": "cancelled", "delete": "deleted"}
#: Beyond this many, jobs an action skipped are counted rather than listed one by one.
MAX_NOTES = 20
#: The timestamp that says when a job entered (or, waiting, will leave) its state.
_STATE_TIME = {
    "executing": "attempted_at",
    "completed": "completed_at",
    "discarded": "discarded_at",
    "cancelled": "cancelled_at",
    "suspended": "inserted_at",
}


def add_parser(sub: Any, common: Any) -> None:
    """Register `kerrera jobs ACTION ...`."""
    parser = sub.add_parser("jobs", help="list, show, retry, cancel and delete jobs")
    common(parser)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="jobs matching filters, newest first")
    common(listing, nested=True)
    _filters(listing)
    listing.add_argument("--limit", type=int, default=50, help="at most N jobs (50; 1-10000)")
    listing.add_argument("--before", type=int, metavar="ID", help="only jobs below this id")
    _json_flag(listing)
    show = actions.add_parser("show", help="one job: fields, args, meta, errors, timeline")
    common(show, nested=True)
    show.add_argument("id", type=int, metavar="ID")
    _json_flag(show)
    for verb in ACTIONS:
        act = actions.add_parser(verb, help=f"{verb} jobs by id, or every job matching filters")
        common(act, nested=True)
        act.add_argument("ids", type=int, nargs="*", metavar="ID", help="job ids")
        _filters(act)
        act.add_argument(
            "--all", dest="all_jobs", action="store_true", help=f"{verb} every job (no filter)"
        )
        _json_flag(act)


def _filters(parser: argparse.ArgumentParser) -> None:
    for option, what in (("state", "states"), ("queue", "queues"), ("worker", "workers")):
        parser.add_argument(
            f"--{option}",
            action="append",
            metavar=option.upper(),
            help=f"only these {what} (comma-separated or repeated)",
        )


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON (for scripts)")


def _split(values: list[str] | None) -> list[str] | None:
    """`--state a,b --state c` -> [a, b, c]."""
    if values is None:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


async def run(args: argparse.Namespace) -> int:
    """Carry out `kerrera jobs ...`; 1 when a job named by id was not found or not acted
    on, 2 for a usage error."""
    from kerrera.app.facade import Kerrera

    # Never migrate from here: a mistyped --prefix should fail, not create a schema.
    app = Kerrera(args.dsn, prefix=args.prefix, data_dir=args.data_dir, migrate=False)
    out = Output()
    try:
        if args.action == "list":
            return await _list(app, args, out)
        if args.action == "show":
            return await _show(app, args.id, out, as_json=args.json)
        return await _act(app, args, out)
    except asyncio.CancelledError:  # Ctrl-C: asyncio cancels the command's task
        if args.action in ACTIONS:
            done = ACTIONS[args.action]
            print(f"kerrera: interrupted; the jobs already {done} stay so", file=sys.stderr)
        return 130
    finally:
        await app.stop()


async def _list(app: Kerrera, args: argparse.Namespace, out: Output) -> int:
    jobs = await app.list_jobs(
        state=_split(args.state), queue=_split(args.queue), worker=_split(args.worker),
        limit=args.limit, before_id=args.before,
    )  # fmt: skip
    if args.json:
        out.json([job_dict(job) for job in jobs])
        return 0
    if not jobs:
        out.line("no jobs match")
        return 0
    head = ("ID", "STATE", "QUEUE", "WORKER", "ATTEMPT", "AT (UTC)", "ARGS")
    rows = [
        (str(j.id), state_cell(j.state), j.queue, j.worker, f"{j.attempt}/{j.max_attempts}",
         when(getattr(j, _STATE_TIME.get(j.state, "scheduled_at"))), _short(j.args))
        for j in jobs
    ]  # fmt: skip
    out.table(head, rows, right={0, 4})
    if out.console is not None and len(jobs) == args.limit:
        out.line(f"first {len(jobs)}; for more: --before {jobs[-1].id}", style="dim")
    return 0


def _short(args: dict[str, Any], width: int = 60) -> str:
    text = codec.dumps(args)
    return text if len(text) <= width else text[: width - 3] + "..."


async def _show(app: Kerrera, job_id: int, out: Output, *, as_json: bool) -> int:
    job = await app.get_job(job_id)
    if job is None:
        print(f"kerrera: no job {job_id}", file=sys.stderr)
        return 1
    if as_json:
        out.json(job_dict(job))
    else:
        show_job(out, job)
    return 0


def show_job(out: Output, job: Job) -> None:
    """The human view of one job."""
    out.line(f"job {job.id} {job.state}", style=f"bold {state_cell(job.state)[1]}")
    by = job.attempted_by or []
    fields = [
        ("worker", job.worker), ("queue", job.queue),
        ("attempt", f"{job.attempt} of {job.max_attempts}"), ("priority", str(job.priority)),
        ("tags", ", ".join(job.tags) or "-"),
        ("attempted by", " ".join([by[0], f"(producer {by[1]})"] if len(by) > 1 else by) or "-"),
    ]  # fmt: skip
    for name, value in fields:
        out.line(f"  {name:<14}{value}")
    for title, data in (("args", job.args), ("meta", job.meta)):
        out.line(title, style="bold")
        for line in json.dumps(data, indent=2, ensure_ascii=False, default=str).splitlines():
            out.line(f"  {line}")
    out.line(f"errors ({len(job.errors)})", style="bold")
    for error in job.errors:
        at = _parse_at(error.get("at"))
        stamp = when(at, precise=True) if at is not None else str(error.get("at", "?"))
        out.line(f"  attempt {error.get('attempt', '?')} at {stamp}", style="yellow")
        for line in str(error.get("error", "")).rstrip().splitlines():
            out.line(f"    {line}")
    out.line("timeline (UTC)", style="bold")
    for at, event in timeline(job):
        out.line(f"  {when(at, precise=True)}  {event}")


def timeline(job: Job) -> list[tuple[datetime, str]]:
    """What happened to `job` and when, oldest first: insertion, the due time, each
    failed attempt (from `errors`), the last attempt's start and the end."""
    events: list[tuple[datetime, str]] = []
    if job.inserted_at is not None:
        events.append((job.inserted_at, "inserted"))
    if job.scheduled_at is not None and job.scheduled_at != job.inserted_at:
        label = "retry due" if job.state == "retryable" else "due"
        events.append((job.scheduled_at, label))
    for error in job.errors:
        at = _parse_at(error.get("at"))
        if at is not None:
            last = (str(error.get("error", "")).strip().splitlines() or ["?"])[-1]
            events.append((at, f"attempt {error.get('attempt', '?')} failed: {last}"))
    if job.attempted_at is not None:
        node = f" on {job.attempted_by[0]}" if job.attempted_by else ""
        events.append((job.attempted_at, f"attempt {job.attempt} started{node}"))
    for name in ("completed", "discarded", "cancelled"):
        at = getattr(job, f"{name}_at")
        if at is not None:
            events.append((at, name))
    return sorted(events, key=lambda event: event[0])


def _parse_at(value: object) -> datetime | None:
    """An error's `at` (ISO 8601, UTC, often with a Z) as a naive UTC datetime."""
    try:
        at = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return at.astimezone(UTC).replace(tzinfo=None) if at.tzinfo is not None else at


async def _act(app: Kerrera, args: argparse.Namespace, out: Output) -> int:
    verb = args.action
    ids = list(dict.fromkeys(args.ids))  # each id once, in the order given
    filtered = args.state or args.queue or args.worker or args.all_jobs
    filters = "filters (--state, --queue, --worker) or --all"
    if ids and filtered:
        raise ConfigError(f"jobs {verb}: give job ids or {filters}, not both")
    if not ids and not filtered:
        raise ConfigError(f"jobs {verb}: give job ids, or {filters}")
    if not ids:
        return await _act_on_matching(app, args, out)
    call: Callable[[Sequence[int]], Awaitable[list[Job]]] = {
        "retry": app.retry_job, "cancel": app.cancel_job, "delete": app.delete_job,
    }[verb]  # fmt: skip
    with progress(verb) as report:
        changed = await act_on_ids(call, ids, report)
    done = {job.id for job in changed}
    missed = [i for i in ids if i not in done]
    for note in await _why_not(app, verb, missed):
        print(f"kerrera: {note}", file=sys.stderr)
    if args.json:
        out.json({"action": verb, "count": len(done), "ids": sorted(done), "missed": missed})
    else:
        of = f" of {len(ids)}" if missed else ""
        out.line(f"{ACTIONS[verb]} {len(done)}{of} {_jobs(len(ids))}")
    return 1 if missed else 0


async def _act_on_matching(app: Kerrera, args: argparse.Namespace, out: Output) -> int:
    verb = args.action
    method = {
        "retry": app.retry_jobs_where, "cancel": app.cancel_jobs_where,
        "delete": app.delete_jobs_where,
    }[verb]  # fmt: skip
    with progress(verb) as report:
        count = await method(
            state=_split(args.state), queue=_split(args.queue), worker=_split(args.worker),
            all_jobs=args.all_jobs, on_progress=report,
        )  # fmt: skip
    if args.json:
        out.json({"action": verb, "count": count})
    else:
        out.line(f"{ACTIONS[verb]} {count} {_jobs(count)}")
    return 0


async def _why_not(app: Kerrera, verb: str, missed: list[int]) -> list[str]:
    """Why each of the `missed` ids was left alone (at most MAX_NOTES lines)."""
    if not missed:
        return []
    found = {job.id: job for job in await app.engine.get_jobs(missed[:MAX_NOTES])}
    notes = []
    for job_id in missed[:MAX_NOTES]:
        job = found.get(job_id)
        if job is None:
            notes.append(f"no job {job_id}")
        elif verb == "cancel":
            notes.append(f"job {job_id} is already {job.state}: not cancelled")
        else:
            hint = " (cancel it first)" if verb == "delete" else ""
            notes.append(f"job {job_id} is {job.state}: not {ACTIONS[verb]}{hint}")
    if len(missed) > MAX_NOTES:
        notes.append(f"... and {len(missed) - MAX_NOTES} more not {ACTIONS[verb]}")
    return notes


def _jobs(n: int) -> str:
    return "job" if n == 1 else "jobs"
