"""`kerrera jobs`: list, show, retry, cancel and delete jobs."""

from __future__ import annotations

import argparse
import asyncio
import difflib
import importlib
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from kerrera.app.inspect import FAILED_STATES, act_on_ids
from kerrera.cli._render import Output, cut, job_dict, progress, shorten_worker, state_cell, when
from kerrera.core import codec
from kerrera.core.errors import ConfigError
from kerrera.core.job import UNFINISHED, Job, JobState
from kerrera.core.options import check_max_attempts, check_priority, check_queue, check_schedule
from kerrera.core.worker import Worker, resolve_worker

if TYPE_CHECKING:
    from kerrera.app.facade import Kerrera

#: Each management action and how its result is told ("retried 3 jobs").
ACTIONS = {"retry": "retried", "cancel": "cancelled", "delete": "deleted"}
#: Beyond this many, jobs an action skipped are counted rather than listed one by one.
MAX_NOTES = 20
#: Up to this many ids named one by one are acted on without asking: whoever typed them
#: chose each job. Longer lists (pasted, or from a script) ask like a filter does.
FEW_IDS = 10
#: How `jobs list` fits a narrow terminal: the args give way first (to 12 characters),
#: then the worker's module path (never its class name), then the queue, then the args.
LIST_SQUEEZE = [(6, cut, 12), (3, shorten_worker, 0), (2, cut, 8), (6, cut, 4)]
#: How many jobs a confirmation shows as a sample.
SAMPLE = 5
_ACTION_HELP = {
    "retry": "Make jobs available to run again now (a running job is left alone).\n"
    "With filters or --all and no --state, only failed or stopped jobs are retried\n"
    "(retryable, discarded, cancelled); give --state completed to re-run completed\n"
    "ones.",
    "cancel": "Cancel jobs that have not finished (a running job is asked to stop).",
    "delete": "Delete jobs that are not running.",
}
_ALL_HELP = {
    "retry": "retry every failed or stopped job (retryable, discarded, cancelled; "
    "--state to choose others)",
    "cancel": "cancel every unfinished job",
    "delete": "delete every job that is not running",
}
_ASKING = (
    f"\n\nActing on filters, --all or more than {FEW_IDS} ids first shows how many jobs\n"
    "and a few of them, and asks (y/N) on a terminal; elsewhere it refuses unless\n"
    "--yes. --dry-run only shows them."
)
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
    _insert_parser(actions, common)
    for verb in ACTIONS:
        act = actions.add_parser(
            verb, help=f"{verb} jobs by id, or every job matching filters",
            description=_ACTION_HELP[verb] + _ASKING,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip
        common(act, nested=True)
        act.add_argument("ids", type=int, nargs="*", metavar="ID", help="job ids")
        _filters(act)
        act.add_argument("--all", dest="all_jobs", action="store_true", help=_ALL_HELP[verb])
        act.add_argument(
            "--dry-run",
            action="store_true",
            help="show how many jobs and a few of them; change nothing",
        )
        act.add_argument(
            "-y",
            "--yes",
            action="store_true",
            help="go ahead without asking (needed off a terminal)",
        )
        _json_flag(act)


def _insert_parser(actions: Any, common: Any) -> None:
    insert = actions.add_parser(
        "insert", help="insert a job for a worker, by name",
        description="Insert one job. When WORKER can be imported here (from the current "
        "directory or the installed packages), its defaults (queue, max attempts, "
        "priority) and its args model apply; otherwise the job is inserted by name, "
        "for a node that can import it.",
    )  # fmt: skip
    common(insert, nested=True)
    insert.add_argument("worker", metavar="WORKER", help="the worker's name, e.g. myapp.jobs.Mail")
    insert.add_argument("--args", default="{}", metavar="JSON", help="a JSON object ({})")
    insert.add_argument("--queue", help="the queue (the worker's, else default)")
    insert.add_argument("--priority", type=int, metavar="N", help="0 (first) to 9 (last)")
    insert.add_argument(
        "--max-attempts", type=int, metavar="N", help="attempts before it is discarded"
    )
    when = insert.add_mutually_exclusive_group()
    when.add_argument("--schedule-in", type=float, metavar="SECONDS", help="run after a delay")
    when.add_argument(
        "--at", metavar="ISO", help="run at this time (ISO 8601; UTC unless it has an offset)"
    )
    _json_flag(insert)


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
        if args.action == "insert":
            return await _insert(app, args, out)
        return await _act(app, args, out)
    except asyncio.CancelledError:  # Ctrl-C: asyncio cancels the command's task
        if getattr(args, "acting", False):
            done = ACTIONS[args.action]
            print(f"kerrera: interrupted; the jobs already {done} stay so", file=sys.stderr)
        elif args.action in ACTIONS:  # while asking, say: nothing was done
            print("kerrera: interrupted; nothing changed", file=sys.stderr)
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
    head = ("ID", "STATE", "QUEUE", "WORKER", "RUNS", "AT (UTC)", "ARGS")
    today = datetime.now(UTC).date()
    rows = [
        (str(j.id), state_cell(j.state), j.queue, j.worker, runs_cell(j),
         _at(getattr(j, _STATE_TIME.get(j.state, "scheduled_at")), today), codec.dumps(j.args))
        for j in jobs
    ]  # fmt: skip
    # Too wide for the terminal: the args give way first, then the worker's module path.
    out.table(head, rows, right={0}, squeeze=LIST_SQUEEZE)
    if out.console is not None and len(jobs) == args.limit:
        out.line(f"first {len(jobs)}; for more: --before {jobs[-1].id}", style="dim")
    return 0


async def _insert(app: Kerrera, args: argparse.Namespace, out: Output) -> int:
    job = await app.insert(build_job(args))
    if args.json:
        out.json(job_dict(job))
        return 0
    due = f", due {when(job.scheduled_at)} UTC" if job.state == "scheduled" else ""
    out.line(f"inserted job {job.id}: {job.worker} in queue {job.queue}, {job.state}{due}")
    return 0


def build_job(args: argparse.Namespace) -> Job:
    """The job `kerrera jobs insert` describes, its options checked."""
    try:
        values = json.loads(args.args)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"option '--args': not valid JSON ({exc.msg} at column {exc.colno}) in "
            f'{args.args!r}; for example --args \'{{"to": "ann@example.com"}}\''
        ) from None
    if not isinstance(values, dict):
        raise ConfigError(f"option '--args' must be a JSON object ({{...}}), got {args.args!r}")
    options: dict[str, Any] = {
        "queue": args.queue, "priority": args.priority, "max_attempts": args.max_attempts,
        "schedule_in": args.schedule_in, "scheduled_at": _parse_option_at(args.at),
    }  # fmt: skip
    worker = _importable(args.worker)
    if worker is not None:
        built: Job = worker.new(values, **options)
        return built
    when, delay = check_schedule(options.pop("scheduled_at"), options.pop("schedule_in"))
    checks: dict[str, Callable[[Any], Any]] = {
        "queue": check_queue, "priority": check_priority, "max_attempts": check_max_attempts,
    }  # fmt: skip
    given = {key: checks[key](value) for key, value in options.items() if value is not None}
    return Job(
        worker=args.worker, args=values, scheduled_at=when, schedule_in=delay,
        state=JobState.SCHEDULED if (when or delay) else JobState.AVAILABLE, **given,
    )  # fmt: skip


def _importable(name: str) -> Worker | None:
    """The worker called `name` if this process can import it (the current directory
    first, like `kerrera start --module`), else None after saying so on stderr: a node
    that can import it will run the job."""
    if "." not in name or not all(part.isidentifier() for part in name.split(".")):
        raise ConfigError(
            f"jobs insert: {name!r} is not a worker name (module.path.Name, as stored)"
        )
    sys.path.insert(0, os.getcwd())
    try:
        return resolve_worker(name)
    except Exception as exc:  # any failure to import: insert by name, as Oban does
        _refuse_a_typo(name)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(
            f"kerrera: note: worker {name!r} is not importable here ({reason}); inserting it "
            "by name with the options given (a node must be able to import it)",
            file=sys.stderr,
        )
        return None


def _refuse_a_typo(name: str) -> None:
    """Refuse `name` when its module imports here but holds no such worker: a typo,
    which no node could run either. Close names in that module are suggested."""
    module_name, _, attr = name.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except Exception:  # not importable here at all: a node may import it
        return
    workers = [
        key for key, value in vars(module).items()
        if isinstance(value, Worker) or (isinstance(value, type) and issubclass(value, Worker))
    ]  # fmt: skip
    close = difflib.get_close_matches(attr, workers, n=3)
    hint = f"; did you mean {' or '.join(f'{module_name}.{c}' for c in close)}?" if close else ""
    raise ConfigError(f"jobs insert: module {module_name} has no worker {attr!r}{hint}")


def _parse_option_at(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"option '--at': {text!r} is not an ISO 8601 time (e.g. 2030-01-31T09:00:00Z)"
        ) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _at(value: datetime | None, today: date) -> str:
    """A time in a listing, short as `ls -l` makes it: the time alone today (UTC), the
    month, day and minute this year, the date alone in another year."""
    if value is None:
        return "-"
    if value.date() == today:
        return value.strftime("%H:%M:%S")
    if value.year == today.year:
        return value.strftime("%m-%d %H:%M")
    return value.strftime("%Y-%m-%d")


def runs_cell(job: Job) -> str:
    """RUNS in a listing: how many times the job ran, and, while it may run again, how
    many more attempts it has (`2 (3 left)`)."""
    if job.state in UNFINISHED:
        return f"{job.attempt} ({attempts_left(job)} left)"
    return str(job.attempt)


def attempts_left(job: Job) -> int:
    """Failures the job may still have before it is discarded. `attempt` counts every
    run and a run that spent no attempt (a snooze, a release at shutdown) raised
    `max_attempts` by one, so the difference is right whatever happened."""
    return max(job.max_attempts - job.attempt, 0)


def runs_text(job: Job) -> str:
    """The `runs` line of `jobs show`: `3 (1 released) · 3 attempts left`."""
    free = [
        f"{n} {word}" for key, word in (("released", "released"), ("snoozed", "snoozed"),
                                        ("rescued", "rescued"))
        if isinstance(n := job.meta.get(key), int) and n > 0
    ]  # fmt: skip
    text = str(job.attempt) + (f" ({', '.join(free)})" if free else "")
    if job.state in UNFINISHED:
        left = attempts_left(job)
        text += f" · {left} {'attempt' if left == 1 else 'attempts'} left"
    return text


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
        ("runs", runs_text(job)), ("priority", str(job.priority)),
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
    failed attempt (from `errors`), the last attempt's start and the end.

    The order is cause and effect, not only the clock: an error's time comes from the
    worker's host and the others from the database (its `now()` is when the statement's
    transaction began), so an error can carry a time a little before its attempt started
    or after the job ended. Each event sorts by its time held inside the bounds its cause
    sets (see `_order`), then by its place in a job's life; the times shown are the ones
    recorded."""
    events: list[tuple[datetime, int, str]] = []
    if job.inserted_at is not None:
        events.append((job.inserted_at, _INSERTED, "inserted"))
    if job.scheduled_at is not None and job.scheduled_at != job.inserted_at:
        label = "retry due" if job.state == "retryable" else "due"
        events.append((job.scheduled_at, _DUE, label))
    for error in job.errors:
        at = _parse_at(error.get("at"))
        if at is not None:
            last = (str(error.get("error", "")).strip().splitlines() or ["?"])[-1]
            rank = _FAILED_NOW if error.get("attempt") == job.attempt else _FAILED_BEFORE
            events.append((at, rank, f"attempt {error.get('attempt', '?')} failed: {last}"))
    if job.attempted_at is not None:
        node = f" on {job.attempted_by[0]}" if job.attempted_by else ""
        events.append((job.attempted_at, _STARTED, f"attempt {job.attempt} started{node}"))
    for name in ("completed", "discarded", "cancelled"):
        at = getattr(job, f"{name}_at")
        if at is not None:
            events.append((at, _ENDED, name))
    return [(at, label) for at, _, label in sorted(events, key=_order(job))]


#: Each kind of event's place in a job's life (the tie-break, and the causal bounds).
_INSERTED, _DUE, _FAILED_BEFORE, _STARTED, _FAILED_NOW, _ENDED = range(6)


def _order(job: Job) -> Callable[[tuple[datetime, int, str]], tuple[datetime, int]]:
    """The sort key of `timeline`: the insertion first; an error of an earlier attempt
    no later than the last attempt's start, the last attempt's error no earlier than
    it; no attempt after the end. (A due time may follow the end: a scheduled job
    cancelled before it was due.)"""
    started, ended = job.attempted_at, _end(job)

    def key(event: tuple[datetime, int, str]) -> tuple[datetime, int]:
        at, rank, _ = event
        if rank == _INSERTED:
            return (datetime.min, rank)
        if started is not None and rank == _FAILED_BEFORE:
            at = min(at, started)
        if started is not None and rank == _FAILED_NOW:
            at = max(at, started)
        if ended is not None and rank in (_FAILED_BEFORE, _STARTED, _FAILED_NOW):
            at = min(at, ended)
        return (at, rank)

    return key


def _end(job: Job) -> datetime | None:
    ends = [t for t in (job.completed_at, job.discarded_at, job.cancelled_at) if t is not None]
    return max(ends, default=None)


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
    if len(ids) > FEW_IDS or args.dry_run:
        found = [await app.get_job(i) for i in ids[:SAMPLE]]
        sample = [job for job in found if job is not None]
        if not await _confirm(args, out, len(ids), sample, f"the {len(ids)} ids given"):
            return 0 if args.dry_run else 1
    call: Callable[[Sequence[int]], Awaitable[list[Job]]] = {
        "retry": app.retry_job, "cancel": app.cancel_job, "delete": app.delete_job,
    }[verb]  # fmt: skip
    args.acting = True
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
    states = _split(args.state)
    if verb == "retry" and states is None:
        states = list(FAILED_STATES)  # never re-run completed jobs unless asked to
    where = {"state": states, "queue": _split(args.queue), "worker": _split(args.worker)}
    count, sample = await app.preview_jobs_where(
        verb, **where, all_jobs=args.all_jobs, sample=SAMPLE
    )
    if count == 0 and not args.dry_run:
        if args.json:
            out.json({"action": verb, "count": 0})
        else:
            out.line(f"no jobs to {verb} ({_described(verb, where)})")
        return 0
    if not await _confirm(args, out, count, sample, _described(verb, where)):
        return 0 if args.dry_run else 1
    method = {
        "retry": app.retry_jobs_where, "cancel": app.cancel_jobs_where,
        "delete": app.delete_jobs_where,
    }[verb]  # fmt: skip
    args.acting = True
    with progress(verb) as report:
        count = await method(**where, all_jobs=args.all_jobs, on_progress=report)
    if args.json:
        out.json({"action": verb, "count": count})
    else:
        out.line(f"{ACTIONS[verb]} {count} {_jobs(count)}")
    return 0


def _described(verb: str, where: dict[str, list[str] | None]) -> str:
    """The jobs a bulk action is about, in words: 'state discarded, queue mail'."""
    parts = [f"{key} {', '.join(names)}" for key, names in where.items() if names]
    if where["state"] is None:
        parts.insert(0, {"cancel": "unfinished", "delete": "not running"}.get(verb, "any state"))
    return "; ".join(parts)


async def _confirm(
    args: argparse.Namespace, out: Output, count: int, sample: list[Job], what: str
) -> bool:
    """Whether to go ahead with a bulk action on `count` jobs (`sample`: a few of them).
    --dry-run shows them and says no; --yes says yes; on a terminal the user is asked;
    anywhere else it is a usage error, since nobody can answer."""
    verb = args.action
    if args.dry_run:
        if args.json:
            out.json({
                "action": verb, "dry_run": True, "count": count,
                "sample": [job_dict(job) for job in sample],
            })  # fmt: skip
        else:
            _summary(out, verb, count, sample, what)
            out.line("dry run: nothing changed")
        return False
    if args.yes:
        return True
    if not sys.stdin.isatty():
        _summary(Output(sys.stderr), verb, count, sample, what)
        raise ConfigError(
            f"jobs {verb}: this would {verb} {count:,} {_jobs(count)}; nobody is at a "
            "terminal to confirm: add --yes to go ahead (or --dry-run to only look)"
        )
    _summary(Output(sys.stderr), verb, count, sample, what)
    answer = await _ask(f"{verb} these {count:,} {_jobs(count)}? [y/N] ")
    if answer.strip().lower() in ("y", "yes"):
        return True
    print("nothing changed", file=sys.stderr)
    return False


def _summary(out: Output, verb: str, count: int, sample: list[Job], what: str) -> None:
    out.line(f"{count:,} {_jobs(count)} to {verb} ({what})", style="bold")
    if sample:
        head = ("ID", "WORKER", "STATE", "QUEUE")
        rows = [(str(j.id), j.worker, state_cell(j.state), j.queue) for j in sample]
        out.table(head, rows, right={0}, squeeze=[(1, shorten_worker, 0)])
        if count > len(sample):
            out.line(f"... and {count - len(sample):,} more", style="dim")


async def _ask(prompt: str) -> str:
    """One line typed on the terminal. The loop waits for stdin to become readable (a
    whole line, on a terminal) instead of blocking in `readline`: so Ctrl-C cancels the
    command at once rather than being swallowed by a blocked read."""
    sys.stderr.write(prompt)
    sys.stderr.flush()
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    fd = sys.stdin.fileno()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await ready
    finally:
        loop.remove_reader(fd)
    return sys.stdin.readline()


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
