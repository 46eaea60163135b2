"""Named SQL statements, loaded once from the `sql/*.sql` files, and their parameters.

Both the async and the sync engine run these statements; this module owns their text and
the shape of their parameters so the two never drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

from psycopg.pq import TransactionStatus

from kerrera.core import codec
from kerrera.core.job import Job, JobState
from kerrera.core.options import check_prefix
from kerrera.engine.base import AckBatch, QueueSignal

_STATES: dict[str, JobState] = {s.value: s for s in JobState}


@cache
def _raw_queries() -> dict[str, str]:
    folder = resources.files("kerrera.engine").joinpath("sql")
    out: dict[str, str] = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        for block in entry.read_text("utf-8").split("-- name: ")[1:]:
            name, _, body = block.partition("\n")
            if name.strip() in out:
                raise RuntimeError(f"statement {name.strip()!r} is defined twice")
            out[name.strip()] = body.strip().rstrip(";")
    return out


#: Scalar columns come back as they are; the five JSON and array columns come back as
#: one JSON document (`doc`), parsed with a single orjson call: per fetched job that is
#: several times cheaper than five json/array loaders.
_SCALARS = (
    "id",
    "state",
    "queue",
    "worker",
    "attempt",
    "max_attempts",
    "inserted_at",
    "scheduled_at",
    "attempted_at",
    "completed_at",
    "discarded_at",
    "priority",
    "cancelled_at",
)


def state_text(alias: str = "") -> str:
    """The job's state as text, in an immutable form (casting the enum is only stable,
    which an index predicate does not allow)."""
    whens = " ".join(f"WHEN '{s.value}' THEN '{s.value}'" for s in JobState)
    return f"(CASE {alias}state {whens} END)"


def unique_predicate(alias: str = "") -> str:
    """Rows the unique index covers: those whose state is among their `uniq_states`.
    The same text is used by the migration, the conflict target and the lookups, so
    that PostgreSQL can prove the index applies."""
    return f"(({alias}meta -> 'uniq_states') ? {state_text(alias)})"


_PLACEHOLDER_RE = re.compile(r"\{(uniq_pred|state_text):([a-z]*\.?)\}")


def _expand(body: str) -> str:
    def one(m: re.Match[str]) -> str:
        return (unique_predicate if m[1] == "uniq_pred" else state_text)(m[2])

    return _PLACEHOLDER_RE.sub(one, body)


def _select_list(alias: str) -> str:
    scalars = ", ".join(f"{alias}{c}" for c in _SCALARS)
    a = alias
    doc = f"json_build_array({a}args, {a}errors, {a}attempted_by, {a}tags, {a}meta)::text AS doc"
    return f"{scalars}, {doc}"


class Statements:
    """The statements for one schema prefix, plus its notification channel names."""

    def __init__(self, prefix: str) -> None:
        self.prefix = check_prefix(prefix)
        quoted = f'"{self.prefix}"'
        cols = _select_list("")
        jcols = _select_list("j.")
        self._sql = {
            name: _expand(body)
            .replace("{prefix}", quoted)
            .replace("{cols}", cols)
            .replace("{jcols}", jcols)
            for name, body in _raw_queries().items()
        }
        self.table = f"{quoted}.oban_jobs"
        self.insert_channel = f"{self.prefix}.oban_insert"
        self.signal_channel = f"{self.prefix}.oban_signal"
        self.leader_channel = f"{self.prefix}.oban_leader"
        #: Kerrera-only requests between nodes (Elixir nodes do not listen here).
        self.control_channel = f"{self.prefix}.kerrera_control"
        #: Job events, progress and `publish` messages for subscribers.
        self.events_channel = f"{self.prefix}.kerrera_events"

    def __getitem__(self, name: str) -> str:
        return self._sql[name]


def insert_params(jobs: list[Job], channel: str | None) -> dict[str, Any]:
    """Parameters of `insert_jobs`: the whole batch as one JSON array."""
    rows = [
        {
            "queue": j.queue, "worker": j.worker, "args": j.args, "meta": j.meta,
            "tags": j.tags, "priority": j.priority, "max_attempts": j.max_attempts,
            "at": _iso(j.scheduled_at), "delay": j.schedule_in,
        }
        for j in jobs
    ]  # fmt: skip
    return {"jobs": codec.dumps(rows), "channel": channel}


def queue_messages(queues: Iterable[str]) -> list[dict[str, Any]]:
    """The `insert` notifications (Oban's `{"queue": ...}`) that statements send with
    `pg_notify`, one per queue, for an in-process notifier to deliver instead."""
    return [{"queue": queue} for queue in sorted(set(queues))]


def insert_messages(jobs: Iterable[Job]) -> list[dict[str, Any]]:
    """The `insert` notifications for saved jobs: one per queue given available jobs."""
    return queue_messages(j.queue for j in jobs if j.state is JobState.AVAILABLE)


def pkill_message(job_id: int) -> dict[str, Any]:
    """Oban's signal asking the node that runs `job_id` to stop it."""
    return {"action": "pkill", "job_id": job_id}


def in_transaction(conn: Any) -> bool:
    """Whether `conn` (psycopg) is inside a transaction that has not ended: what a
    statement notified on it must wait for the commit, as PostgreSQL's NOTIFY does."""
    status = conn.info.transaction_status
    return status in (TransactionStatus.ACTIVE, TransactionStatus.INTRANS,
                      TransactionStatus.INERROR)  # fmt: skip


def unique_params(jobs: list[Job], keys: list[str], channel: str | None) -> dict[str, Any]:
    """Parameters of `insert_unique`: each job with its key stamped into `meta`."""
    rows = []
    for j, key in zip(jobs, keys, strict=True):
        spec = j.unique
        assert spec is not None
        rows.append({
            "queue": j.queue, "worker": j.worker, "args": j.args,
            "meta": {**j.meta, "uniq_key": key, "uniq_states": list(spec.states)},
            "tags": j.tags, "priority": j.priority, "max_attempts": j.max_attempts,
            "at": _iso(j.scheduled_at), "delay": j.schedule_in, "ukey": key,
            "period": spec.period, "uts": spec.timestamp,
            "replace": None if spec.replace is None else
            {state: list(fields) for state, fields in spec.replace.items()},
        })  # fmt: skip
    return {"jobs": codec.dumps(rows), "channel": channel}


def queue_state_params(
    queue: str, node: str, changes: dict[str, Any], signal: QueueSignal,
    channel: str | None, control_channel: str | None,
) -> dict[str, Any]:  # fmt: skip
    """Parameters of `set_queue_state`: which fields the command sets, and to what, and
    how it is announced (`channel`: Oban's signal channel, None to send nothing)."""
    return {
        "queue": queue, "node": node, "channel": channel, "control_channel": control_channel,
        "control": signal.control, "head": signal.head, "tail": signal.tail,
        "idents": list(signal.idents), "peers": signal.peers,
        "set_paused": "paused" in changes, "paused": changes.get("paused"),
        "set_limit": "limit" in changes, "limit": changes.get("limit"),
        "set_running": "running" in changes, "running": changes.get("running"),
    }  # fmt: skip


def saved_jobs(jobs: list[Job], rows: list[tuple[Any, ...]]) -> list[Job]:
    """New `Job` objects for inserted jobs: what the caller gave plus what the database
    decided (id, state, inserted_at, scheduled_at), without reading args back."""
    if len(rows) != len(jobs):
        raise RuntimeError(f"inserted {len(rows)} rows for {len(jobs)} jobs")
    return [
        Job(
            id,
            JobState(state),
            j.queue,
            j.worker,
            j.args,
            [],
            0,
            j.max_attempts,
            inserted_at,
            scheduled_at,
            None,
            None,
            None,
            None,
            j.priority,
            j.tags,
            j.meta,
        )
        for j, (id, state, inserted_at, scheduled_at) in zip(jobs, rows, strict=True)
    ]


def split_due(jobs: Sequence[Job]) -> tuple[list[int], list[int], list[int]]:
    """Positions of jobs due now (COPY-able: every default applies), of the other plain
    jobs, and of unique jobs (which take their own statement)."""
    now: list[int] = []
    later: list[int] = []
    unique: list[int] = []
    for i, job in enumerate(jobs):
        if job.unique is not None:
            unique.append(i)
        elif job.scheduled_at is not None or job.schedule_in:
            later.append(i)
        elif job.meta and not _COMPOSED.isdisjoint(job.meta):
            # a trigger may decide its state (a chain link waits): the INSERT reads it back
            later.append(i)
        else:
            now.append(i)
    return now, later, unique


#: Meta keys of jobs that belong to a workflow, batch or chain (see the migrations).
_COMPOSED = frozenset({"workflow_id", "batch_id", "chain_id"})


def copy_rows(ids: list[int], jobs: list[Job]) -> list[tuple[Any, ...]]:
    """The COPY rows of jobs due now, in `copy_jobs` column order (psycopg escapes them)."""
    dumps = codec.dumps
    # Empty meta and tags (the usual case) go as ready-made literals: serialising them
    # per row is a visible share of a bulk insert's time.
    return [
        (
            id_,
            j.queue,
            j.worker,
            dumps(j.args),
            dumps(j.meta) if j.meta else "{}",
            j.tags or "{}",
            j.priority,
            j.max_attempts,
        )
        for id_, j in zip(ids, jobs, strict=True)
    ]


def copied_jobs(ids: list[int], at: datetime, jobs: list[Job]) -> list[Job]:
    """The `Job` objects of a COPY: available, inserted and scheduled at `at`."""
    return [
        Job(
            id_,
            JobState.AVAILABLE,
            j.queue,
            j.worker,
            j.args,
            [],
            0,
            j.max_attempts,
            at,
            at,
            None,
            None,
            None,
            None,
            j.priority,
            j.tags,
            j.meta,
        )
        for id_, j in zip(ids, jobs, strict=True)
    ]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def job_row(cursor: Any) -> Any:
    """psycopg row factory that builds `Job` objects from `{cols}` rows."""
    return _load_job


def _load_job(v: Any) -> Job:
    args, errors, attempted_by, tags, meta = codec.loads(v[13])
    return Job(
        v[0],
        _STATES[v[1]],
        v[2],
        v[3],
        args,
        errors or [],
        v[4],
        v[5],
        v[6],
        v[7],
        v[8],
        v[9],
        attempted_by,
        v[10],
        v[11],
        tags or [],
        meta or {},
        v[12],
    )


def flagged_job_row(cursor: Any) -> Any:
    """Row factory for `{cols}` followed by one boolean: (Job, flag)."""
    return _load_flagged


def _load_flagged(v: Any) -> tuple[Job, bool]:
    return _load_job(v), bool(v[14])


def ack_params(acks: AckBatch, queue: str = "", demand: int = 0, node: str = "",
               producer: str = "") -> dict[str, Any]:  # fmt: skip
    """Parameters of `ack_and_fetch` for an `AckBatch`: its outcomes, and (with
    `demand`) the fetch that travels with them. Demand 0 only acks."""
    return {
        "done_ids": array_literal(acks.done_ids),
        "done_attempts": array_literal(acks.done_attempts),
        "outcomes": codec.dumps(acks.outcomes) if acks.outcomes else "[]",
        "queue": queue, "demand": demand, "node": node, "producer": producer,
        "owner": acks.producer,
    }  # fmt: skip


def array_literal(values: list[int]) -> str:
    """`{1,2,3}`: integer arrays as one text parameter (cast in SQL), far cheaper to send
    than psycopg's element-by-element list adaptation."""
    return "{" + ",".join(map(str, values)) + "}"
