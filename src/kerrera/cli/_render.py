"""Output of the operator commands: tables and colour on a terminal, plain aligned text
when piped (never an escape code there), JSON for scripts, progress on stderr."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from datetime import datetime
from typing import IO, Any

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from kerrera.core.job import Job

#: A table cell: its text, or (text, rich style) for colour on a terminal.
Cell = str | tuple[str, str]

#: The colour of each state on a terminal.
STATE_STYLES = {
    "available": "blue",
    "scheduled": "cyan",
    "executing": "yellow",
    "retryable": "magenta",
    "completed": "green",
    "discarded": "red",
    "cancelled": "bright_black",
    "suspended": "bright_black",
}

#: The columns of `oban_jobs`, in table order: what `--json` prints of a job.
JOB_FIELDS = (
    "id", "state", "queue", "worker", "args", "errors", "attempt", "max_attempts",
    "inserted_at", "scheduled_at", "attempted_at", "completed_at", "attempted_by",
    "discarded_at", "priority", "tags", "meta", "cancelled_at",
)  # fmt: skip


def colour_allowed(stream: IO[str]) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set (no-color.org)."""
    return stream.isatty() and not os.environ.get("NO_COLOR")


class Output:
    """Where a command writes: `console` is a rich console on a terminal, None when the
    output is piped or redirected (then everything is plain text)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.console: Console | None = None
        if self.stream.isatty():
            self.console = Console(
                file=self.stream, highlight=False, no_color=not colour_allowed(self.stream)
            )

    def line(self, text: str = "", style: str = "") -> None:
        """One line of text (styled on a colour terminal)."""
        if self.console is not None:
            self.console.print(Text(text, style=style), soft_wrap=True)
        else:
            self.stream.write(text + "\n")

    def table(
        self, head: Sequence[str], rows: Sequence[Sequence[Cell]], right: Collection[int] = ()
    ) -> None:
        """A table; the columns at the indexes in `right` (numbers) are right-aligned."""
        if self.console is not None:
            self.console.print(rich_table(head, rows, right))
        else:
            self.stream.write(plain_table(head, rows, right) + "\n")

    def json(self, value: Any) -> None:
        """`value` as indented JSON (datetimes in ISO 8601); never coloured."""
        self.stream.write(json.dumps(value, default=_json_default, indent=2) + "\n")


def rich_table(
    head: Sequence[str], rows: Sequence[Sequence[Cell]], right: Collection[int] = ()
) -> Table:
    """The rich form of a table (for a terminal)."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, header_style="bold", pad_edge=False)
    for i, name in enumerate(head):
        table.add_column(name, justify="right" if i in right else "left")
    for row in rows:
        table.add_row(*(Text(c) if isinstance(c, str) else Text(c[0], style=c[1]) for c in row))
    return table


def plain_table(
    head: Sequence[str], rows: Sequence[Sequence[Cell]], right: Collection[int] = ()
) -> str:
    """The plain-text form of a table: columns separated by two spaces, no colour."""
    texts = [list(head), *([c if isinstance(c, str) else c[0] for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in texts) for i in range(len(head))]
    lines = []
    for row in texts:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def state_cell(state: str) -> Cell:
    """A job state, coloured after what it means."""
    return (state, STATE_STYLES.get(state, ""))


def when(value: datetime | None, *, precise: bool = False) -> str:
    """A naive UTC timestamp for people: to the second (or millisecond), '-' if unset."""
    if value is None:
        return "-"
    return value.isoformat(" ", "milliseconds" if precise else "seconds")


def job_dict(job: Job) -> dict[str, Any]:
    """A job as JSON-ready data: every column under its own name."""
    out = {name: getattr(job, name) for name in JOB_FIELDS}
    out["state"] = str(job.state)
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


@contextlib.contextmanager
def progress(label: str) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr while a long action runs, yielding the callback
    `(done, total)` to report to; off a terminal it yields None and shows nothing (logs
    and pipes get the final summary only)."""
    if not sys.stderr.isatty():
        yield None
        return
    console = Console(stderr=True, no_color=not colour_allowed(sys.stderr))
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def report(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield report
