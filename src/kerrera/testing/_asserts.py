"""`assert_enqueued`, `refute_enqueued` and `all_enqueued`: what a test inserted, checked
against the real jobs table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from kerrera.core.context import CURRENT_APP, last_started
from kerrera.core.errors import ConfigError
from kerrera.core.job import Job

if TYPE_CHECKING:
    from kerrera.app.facade import Kerrera

#: Seconds a job's `scheduled_at` may differ from `now + scheduled_in` and still match.
SCHEDULE_DELTA = 1.0


def target_app(app: Kerrera | None) -> Kerrera:
    """`app`, else the one entered in this context, else the one started last."""
    if app is not None:
        return app
    try:
        return CURRENT_APP.get()
    except LookupError:
        found = last_started()
        if found is None:
            raise ConfigError(
                "no Kerrera instance: pass app=, or start one first (`async with app:`)"
            ) from None
        return found


def filters(
    worker: Any, queue: str | None, args: Any, meta: Mapping[str, Any] | None,
    tags: Sequence[str] | None, priority: int | None,
) -> dict[str, Any]:  # fmt: skip
    """The statement's filters; a worker may be given as itself or by name."""
    name = worker if worker is None or isinstance(worker, str) else getattr(worker, "name", None)
    if worker is not None and not isinstance(name, str):
        raise ConfigError(f"worker must be a worker or its name, got {worker!r}")
    if args is not None and not isinstance(args, Mapping):
        args = _as_dict(worker, args)
    return {
        "worker": name, "queue": queue, "args": dict(args or {}), "meta": dict(meta or {}),
        "tags": list(tags or ()), "priority": priority,
    }  # fmt: skip


def _as_dict(worker: Any, args: Any) -> dict[str, Any]:
    adapter = getattr(getattr(worker, "options", None), "args", None)
    if adapter is None:
        raise ConfigError(f"args must be a dict, got {args!r}")
    return adapter.dump(args)  # type: ignore[no-any-return]


def scheduled_near(
    jobs: list[Job], now: datetime, scheduled_in: float | None, delta: float
) -> list[Job]:
    """Jobs due within `delta` seconds of `now + scheduled_in` (all when None)."""
    if scheduled_in is None:
        return jobs
    due = now + timedelta(seconds=scheduled_in)
    return [
        j for j in jobs
        if j.scheduled_at is not None and abs((j.scheduled_at - due).total_seconds()) <= delta
    ]  # fmt: skip


def describe(wanted: dict[str, Any], scheduled_in: float | None) -> str:
    """The filters, for a failure message."""
    shown = {k: v for k, v in wanted.items() if v not in (None, {}, [])}
    if scheduled_in is not None:
        shown["scheduled_in"] = scheduled_in
    return ", ".join(f"{k}={v!r}" for k, v in shown.items()) or "any job"


def listing(jobs: list[Job], limit: int = 10) -> str:
    """Jobs, one per line, for a failure message."""
    if not jobs:
        return "  (none)"
    lines = [
        f"  #{j.id} {j.worker} queue={j.queue!r} state={j.state} args={j.args!r}"
        f" scheduled_at={j.scheduled_at}"
        for j in jobs[:limit]
    ]
    if len(jobs) > limit:
        lines.append(f"  ... and {len(jobs) - limit} more")
    return "\n".join(lines)


def missing(wanted: dict[str, Any], scheduled_in: float | None, near: list[Job]) -> AssertionError:
    """The failure of `assert_enqueued`, listing what is enqueued instead."""
    return AssertionError(
        f"expected a job enqueued with {describe(wanted, scheduled_in)}; "
        f"enqueued jobs:\n{listing(near)}"
    )


def unexpected(
    wanted: dict[str, Any], scheduled_in: float | None, found: list[Job]
) -> AssertionError:
    """The failure of `refute_enqueued`, listing the matches."""
    return AssertionError(
        f"expected no job enqueued with {describe(wanted, scheduled_in)}; found:\n{listing(found)}"
    )


async def all_enqueued(
    *, worker: Any = None, queue: str | None = None, args: Any = None,
    meta: Mapping[str, Any] | None = None, tags: Sequence[str] | None = None,
    priority: int | None = None, scheduled_in: float | None = None,
    delta: float = SCHEDULE_DELTA, app: Kerrera | None = None,
) -> list[Job]:  # fmt: skip
    """Jobs waiting to run (available or scheduled) that match, oldest first.

    `args` and `meta` match partially (the job's may hold more keys, nested too); `tags`
    must all be present; `scheduled_in` (seconds) matches within `delta` seconds.

    Example: `jobs = await testing.all_enqueued(worker=Mailer, queue="mail")`.
    """
    target = target_app(app)
    engine = await target._open()
    wanted = filters(worker, queue, args, meta, tags, priority)
    jobs = await engine.enqueued_jobs(**wanted)
    if scheduled_in is not None and jobs:
        jobs = scheduled_near(jobs, await engine.db_now(), scheduled_in, delta)
    return jobs


async def assert_enqueued(
    *, worker: Any = None, queue: str | None = None, args: Any = None,
    meta: Mapping[str, Any] | None = None, tags: Sequence[str] | None = None,
    priority: int | None = None, scheduled_in: float | None = None,
    delta: float = SCHEDULE_DELTA, app: Kerrera | None = None,
) -> Job:  # fmt: skip
    """Fail unless a matching job is enqueued; return the first match.

    Example:
        await app.insert(Mailer.new({"to": "a@b.c", "lang": "en"}, schedule_in=60))
        await testing.assert_enqueued(worker=Mailer, args={"to": "a@b.c"}, scheduled_in=60)
    """
    found = await all_enqueued(
        worker=worker, queue=queue, args=args, meta=meta, tags=tags, priority=priority,
        scheduled_in=scheduled_in, delta=delta, app=app,
    )  # fmt: skip
    if found:
        return found[0]
    near = await all_enqueued(worker=worker, queue=queue, app=app) or await all_enqueued(app=app)
    raise missing(filters(worker, queue, args, meta, tags, priority), scheduled_in, near)


async def refute_enqueued(
    *, worker: Any = None, queue: str | None = None, args: Any = None,
    meta: Mapping[str, Any] | None = None, tags: Sequence[str] | None = None,
    priority: int | None = None, scheduled_in: float | None = None,
    delta: float = SCHEDULE_DELTA, app: Kerrera | None = None,
) -> None:  # fmt: skip
    """Fail if a matching job is enqueued.

    Example: `await testing.refute_enqueued(worker=Mailer, args={"to": "a@b.c"})`.
    """
    found = await all_enqueued(
        worker=worker, queue=queue, args=args, meta=meta, tags=tags, priority=priority,
        scheduled_in=scheduled_in, delta=delta, app=app,
    )  # fmt: skip
    if found:
        raise unexpected(filters(worker, queue, args, meta, tags, priority), scheduled_in, found)
