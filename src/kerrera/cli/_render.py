"""Output of the operator commands: tables and colour on a terminal, plain aligned text
when piped (never an escape code there), JSON for scripts, progress on stderr."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
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
#: Shortens a column's text to a width (or as close as it sensibly can).
Shortener = Callable[[str, int], str]
#: How a table gives way when too wide: (column, shortener, floor) steps (see `fit`).
Squeeze = Sequence[tuple[int, Shortener, int]]
#: The width a table fits in when the output is not a terminal that says its own.
DEFAULT_WIDTH = 80
#: The space between two columns (rich's default padding gives the same).
GAP = 2
ELLIPSIS = "…"

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

    @property
    def width(self) -> int:
        """The columns a table may use: the terminal's width, else $COLUMNS, else 80."""
        if self.console is not None:
            return self.console.width
        return shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns

    def table(
        self, head: Sequence[str], rows: Sequence[Sequence[Cell]], right: Collection[int] = (),
        squeeze: Squeeze = (),
    ) -> None:  # fmt: skip
        """A table; the columns at the indexes in `right` (numbers) are right-aligned.
        When it is wider than `width`, columns are shortened as `squeeze` says (`fit`)."""
        if squeeze:
            rows = fit(head, rows, self.width, squeeze)
        if self.console is not None:
            self.console.print(rich_table(head, rows, right))
        else:
            self.stream.write(plain_table(head, rows, right) + "\n")

    def json(self, value: Any) -> None:
        """`value` as indented JSON (datetimes in ISO 8601); never coloured."""
        self.stream.write(json.dumps(value, default=_json_default, indent=2) + "\n")


def fit(
    head: Sequence[str], rows: Sequence[Sequence[Cell]], width: int, squeeze: Squeeze
) -> list[list[Cell]]:
    """`rows` with columns shortened until the table fits `width` columns: each step of
    `squeeze` (column, shortener, floor) shortens its column to no less than `floor`
    characters (nor its heading's width), in the order given; a column may come twice,
    with a lower floor the second time. A shortener may keep a cell wider than asked (a
    worker keeps its class name): then the table stays wider."""
    table = [list(row) for row in rows]
    widths = [max([len(head[i]), *(len(_text(row[i])) for row in rows)]) for i in range(len(head))]
    excess = sum(widths) + GAP * (len(head) - 1) - width
    for column, shorten, floor in squeeze:
        if excess <= 0:
            break
        target = max(floor, len(head[column]), widths[column] - excess)
        if target >= widths[column]:
            continue
        for row in table:
            cell = row[column]
            short = shorten(_text(cell), target)
            row[column] = short if isinstance(cell, str) else (short, cell[1])
        new = max([len(head[column]), *(len(_text(row[column])) for row in table)])
        excess -= widths[column] - new
        widths[column] = new
    return table


def _text(cell: Cell) -> str:
    return cell if isinstance(cell, str) else cell[0]


def shorten_worker(name: str, width: int) -> str:
    """A worker name in `width` characters, shortened from the left so the class name
    and the modules nearest it stay: `…mail.SendWelcome`. The class name is never cut
    (then the result is wider than asked)."""
    if len(name) <= width:
        return name
    parts = name.split(".")
    kept = parts[-1]
    for part in reversed(parts[:-1]):
        longer = f"{part}.{kept}"
        if len(longer) + len(ELLIPSIS) > width:
            break
        kept = longer
    return ELLIPSIS + kept if len(parts) > 1 else kept


def cut(text: str, width: int) -> str:
    """`text` in `width` characters, its end replaced by an ellipsis if too long."""
    return text if len(text) <= width else text[: max(width - 1, 0)] + ELLIPSIS


def rich_table(
    head: Sequence[str], rows: Sequence[Sequence[Cell]], right: Collection[int] = ()
) -> Table:
    """The rich form of a table (for a terminal)."""
    # Collapsed padding: two spaces between columns, as in the plain form (see GAP).
    table = Table(
        box=box.SIMPLE_HEAD, show_edge=False, header_style="bold", pad_edge=False,
        collapse_padding=True,
    )  # fmt: skip
    for i, name in enumerate(head):
        # Cells come shortened to fit (see `fit`); rich must not fold them over lines.
        table.add_column(name, justify="right" if i in right else "left", no_wrap=True)
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
