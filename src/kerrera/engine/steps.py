"""How engine logic is written once for two engines: as generators of steps.

Each engine operation (insert, ack, retry, list, ...) is a generator in `jobs.py`,
`node.py`, `inspect.py`, `testing.py` or `unique.py`. It builds the parameters, yields
one step at a time, reads what comes back and returns the result; it never touches a
connection. The async engine (`postgres.py`) and the sync one (`sync.py`) only drive
these generators, each with its own kind of connection. A driver answers each step:

- `Query`: runs the named statement, sends back its rows (a list, empty for a statement
  that returns none), built by the step's psycopg row factory;
- `CopyIn`: copies the rows into the statement's table (COPY ... FROM STDIN);
- `Atomic`: drives the nested steps in one transaction, sends back their result. The
  driver opens one only on an autocommit connection: a caller's connection outside
  autocommit is in (or opens) a transaction of the caller's, which must decide;
- `HandOver`: gives the messages to the app's in-process notifier, after the
  statement (or, on a caller's open transaction, after it ends), as `pg_notify` would.

An exception a step raises is thrown into the generator at that `yield`, so an operation
can retry or give up (see `retry_jobs`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeAlias, TypeVar

from psycopg.rows import tuple_row

from kerrera.engine.base import Message
from kerrera.engine.statements import job_row

T = TypeVar("T")

#: A psycopg row factory (`tuple_row`, `job_row`, ...).
RowFactory: TypeAlias = Callable[[Any], Any]


class Query(NamedTuple):
    """Run the statement `name` with `params`; the rows come back built by `row`."""

    name: str
    params: dict[str, Any]
    row: RowFactory = job_row


class CopyIn(NamedTuple):
    """COPY `rows` in with the statement `name` (a `COPY ... FROM STDIN`)."""

    name: str
    rows: list[tuple[Any, ...]]


class Atomic(NamedTuple):
    """Drive `steps` in one transaction; their result comes back."""

    steps: Generator[Step, Any, Any]


class HandOver(NamedTuple):
    """Give `messages` on `channel` to the in-process notifier."""

    channel: str
    messages: Sequence[Message]


Step: TypeAlias = Query | CopyIn | Atomic | HandOver
#: An engine operation: yields steps, receives what each gives back, returns a `T`.
Steps: TypeAlias = Generator[Step, Any, T]


@dataclass(frozen=True, slots=True)
class Route:
    """Where one kind of notification goes: on `channel`, sent by the statement itself
    with `pg_notify` (delivered only if it commits, at no extra round trip) when
    `in_statement`, else handed to the in-process notifier after it (`HandOver`)."""

    channel: str
    in_statement: bool

    @property
    def param(self) -> str | None:
        """The statement's `channel` parameter: None tells it not to notify."""
        return self.channel if self.in_statement else None


def one(name: str, params: dict[str, Any], row: RowFactory = tuple_row) -> Steps[list[Any]]:
    """An operation of one statement that returns its rows as they are."""
    rows: list[Any] = yield Query(name, params, row)
    return rows


def repeatable(conn: Any) -> bool:
    """Whether a statement that failed on `conn` (None: a pooled one) may simply be run
    again: not inside a caller's transaction, which the failure has aborted."""
    return conn is None or bool(conn.autocommit)
