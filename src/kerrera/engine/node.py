"""What a running node asks of the engine besides fetching and acking, as steps (see
steps.py): producers' heartbeats and reclaims, the lifeline's rescue, the stager, the
pruner and reindexer, the leadership lease, cron ticks, queue commands and progress."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from kerrera.core import codec
from kerrera.core.job import Job
from kerrera.engine.base import QueueSignal
from kerrera.engine.jobs import insert_jobs
from kerrera.engine.statements import queue_messages, queue_state_params
from kerrera.engine.steps import Atomic, HandOver, Route, Steps, one

#: What a cron tick inserts: `plan(last ticks by entry name, database now)`.
CronPlan = Callable[[dict[str, datetime], datetime], list[Job]]


def reclaim_jobs(queue: str, producer: str, running: Sequence[int]) -> Steps[int]:
    """Put back jobs `producer` claimed but does not hold; return how many."""
    params = {"queue": queue, "producer": producer, "running": list(running)}
    rows = yield from one("reclaim_jobs", params)
    return int(rows[0][0]) if rows else 0


def heartbeat(producers: Sequence[tuple[str, str, str, str]]) -> Steps[None]:
    """Record that these producers (uuid, node, queue, state as JSON) are alive."""
    yield from one("heartbeat", {
        "uuids": [p[0] for p in producers], "nodes": [p[1] for p in producers],
        "queues": [p[2] for p in producers], "states": [p[3] for p in producers],
    })  # fmt: skip


def rescue_jobs(ttl: float, rescue_after: float, route: Route) -> Steps[tuple[int, int]]:
    """Rescue orphaned executing jobs; return (jobs rescued, producers expired)."""
    params = {"ttl": ttl, "rescue_after": rescue_after, "channel": route.param}
    rows = yield from one("rescue_jobs", params)
    if not rows:
        return 0, 0
    rescued, expired, queues = rows[0]
    if queues and not route.in_statement:
        yield HandOver(route.channel, queue_messages(queues))
    return int(rescued), int(expired)


def stage_jobs(limit: int, route: Route) -> Steps[dict[str, int]]:
    """Make due scheduled and retryable jobs available; return counts by queue."""
    rows = yield from one("stage_jobs", {"limit": limit, "channel": route.param})
    staged = {queue: int(n) for queue, n, _ in rows}
    if staged and not route.in_statement:
        yield HandOver(route.channel, queue_messages(staged))
    return staged


def elect_leader(name: str, node: str, started_at: datetime, lease: float) -> Steps[bool]:
    """Take or renew the lease of `name`; True while this instance holds it."""
    params = {"name": name, "node": node, "started_at": started_at, "lease": lease}
    rows = yield from one("elect_leader", params)
    return bool(rows)


def resign_leader(name: str, node: str, started_at: datetime, route: Route) -> Steps[None]:
    """Give the lease up (if held) and tell the other nodes (`route`: the leader
    channel)."""
    params = {"name": name, "node": node, "started_at": started_at, "channel": route.param}
    rows = yield from one("resign_leader", params)
    if rows and not route.in_statement:
        yield HandOver(route.channel, [{"down": row[0]} for row in rows])


def get_leader(name: str) -> Steps[str | None]:
    """The node holding the unexpired lease of `name`, if any."""
    rows = yield from one("get_leader", {"name": name})
    return str(rows[0][0]) if rows else None


def prune_jobs(max_age: dict[str, float | None], limit: int) -> Steps[dict[str, int]]:
    """Delete one batch of finished jobs older than their state's max age; return
    counts by state."""
    rows = yield from one("prune_jobs", {
        "completed": max_age.get("completed"), "cancelled": max_age.get("cancelled"),
        "discarded": max_age.get("discarded"), "limit": limit,
    })  # fmt: skip
    counts: dict[str, int] = {}
    for (state,) in rows:
        counts[state] = counts.get(state, 0) + 1
    ages = [age for age in max_age.values() if age is not None]
    if ages:  # workflows whose every step is gone go too (their context, their name)
        yield from one("prune_workflows", {"age": max(ages), "limit": limit})
    return counts


def job_indexes() -> Steps[list[tuple[str, bool]]]:
    """The jobs table's indexes: (qualified name, True for a leftover of an interrupted
    concurrent rebuild, to drop)."""
    rows = yield from one("job_indexes", {})
    return [(str(name), bool(leftover)) for name, leftover in rows]


def insert_cron(
    names: Sequence[str], plan: CronPlan, route: Route
) -> Steps[tuple[list[Job], datetime]]:
    """Seed the entries' ticks, then in one transaction: lock their last ticks, insert
    the jobs that `plan(last ticks, database now)` returns and advance the ticks to now."""
    yield from one("seed_cron", {"names": list(names)})
    ticked: tuple[list[Job], datetime] = yield Atomic(_tick(list(names), plan, route))
    return ticked


def _tick(names: list[str], plan: CronPlan, route: Route) -> Steps[tuple[list[Job], datetime]]:
    rows = yield from one("lock_cron", {"names": names})
    now = rows[0][2] if rows else (yield from db_now())
    jobs = plan({r[0]: r[1] for r in rows}, now)
    saved = (yield from insert_jobs(jobs, route)) if jobs else []
    yield from one("advance_cron", {"names": names, "until": now})
    return saved, now


def db_now() -> Steps[datetime]:
    """The database clock, naive UTC."""
    rows = yield from one("db_now", {})
    now: datetime = rows[0][0]
    return now


def set_queue_state(
    queue: str, node: str, changes: dict[str, Any], signal: QueueSignal,
    signals: Route, control: Route,
) -> Steps[None]:  # fmt: skip
    """Persist a queue command (`changes`: paused / limit / running) and announce it
    (`signal`: see `QueueSignal`) in one statement: on the `control` route first, then
    on the `signals` route (Oban's channel)."""
    params = queue_state_params(queue, node, changes, signal, signals.param, control.param)
    rows = yield from one("set_queue_state", params)
    if not signals.in_statement:  # (else the statement sent them itself)
        yield HandOver(control.channel, [p for n, p, _ in rows if n == 1])
        yield HandOver(signals.channel, [p for n, p, _ in rows if n == 2])


def queue_states(node: str) -> Steps[list[tuple[str, str, Any, Any, Any]]]:
    """Persisted queue commands for every node ('') and for `node`: (queue, node or
    '', paused, limit, running)."""
    rows = yield from one("queue_states", {"node": node})
    return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]


def instance_names() -> Steps[list[str]]:
    """The instance names in `oban_peers` (signals for one node name them)."""
    rows = yield from one("instance_names", {})
    return [row[0] for row in rows]


def write_progress(
    job_id: int, attempt: int, progress: dict[str, Any], message: str, route: Route
) -> Steps[bool]:
    """Store a running job's progress in its meta and publish `message` (`route`: the
    events channel), if this attempt still owns the job. Returns whether it did."""
    rows = yield from one("write_progress", {
        "id": job_id, "attempt": attempt, "progress": codec.dumps(progress),
        "channel": route.param, "payload": message,
    })  # fmt: skip
    if rows and not route.in_statement:
        yield HandOver(route.channel, [message])
    return bool(rows)
