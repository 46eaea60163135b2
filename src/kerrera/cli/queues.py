"""`kerrera queues`: see every queue (per node: limit, running, paused; per queue: jobs
available, scheduled, retryable), and pause, resume, scale, start or stop a queue across
the cluster (or on one node) from any shell."""

from __future__ import annotations

import argparse
import difflib
import sys
from typing import TYPE_CHECKING, Any

from kerrera.cli._render import Cell, Output, cut
from kerrera.core.errors import ConfigError
from kerrera.core.job import UNFINISHED

if TYPE_CHECKING:
    from kerrera.app.facade import Kerrera

ACTIONS = ("pause", "resume", "scale", "start", "stop")
#: The report's columns (`--json` has every key of `check_all_queues` rows, plus these).
HEAD = ("QUEUE", "NODE", "LIMIT", "RUNNING", "AVAILABLE", "SCHEDULED", "RETRYABLE", "PAUSED")
NUMBERS = frozenset({2, 3, 4, 5, 6})
#: Too wide for the terminal: node names give way first, then queue names.
SQUEEZE = [(1, cut, 10), (0, cut, 10)]


_NAMES = (
    "The command is saved and applies to nodes that start later, so a name that no node, "
    "queue command or job has used (most likely a typo) is refused, with close names "
    "suggested; --force acts anyway. `start` takes a new queue name unless it is close "
    "to a known one."
)


def add_parser(sub: Any, common: Any) -> None:
    """Register `kerrera queues [ACTION ...]`."""
    queues = sub.add_parser("queues", help="list queues per node, or control one")
    common(queues)
    queues.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    actions = queues.add_subparsers(dest="action", metavar="ACTION")
    for action in ACTIONS:
        verb = actions.add_parser(
            action, help=f"{action} a queue on every node (or --node)",
            description=f"{action.capitalize()} a queue on every node (or --node). {_NAMES}",
        )  # fmt: skip
        common(verb, nested=True)
        verb.add_argument("queue")
        if action in ("scale", "start"):
            verb.add_argument("limit", type=int)
        verb.add_argument("--node", help="only this node")
        verb.add_argument(
            "--force", action="store_true",
            help="act even on a queue (or node) that no node, command or job has used yet",
        )  # fmt: skip


async def run(args: argparse.Namespace) -> int:
    """Carry out `kerrera queues ...`."""
    from kerrera.app.facade import Kerrera

    # Never migrate from here: a mistyped --prefix should fail, not create a schema.
    app = Kerrera(args.dsn, prefix=args.prefix, data_dir=args.data_dir, migrate=False)
    try:
        if args.action is None:
            report = await queue_report(app)
            out = Output()
            if args.json:
                out.json(report)
            elif not report:
                out.line("no queues: no live node and no unfinished job")
            else:
                out.table(HEAD, [_cells(r) for r in report], right=NUMBERS, squeeze=SQUEEZE)
            return 0
        for note in await check_names(app, args.action, args.queue, args.node, force=args.force):
            print(f"kerrera: note: {note}", file=sys.stderr)
        call = getattr(app, f"{args.action}_queue")
        extra = (args.limit,) if args.action in ("scale", "start") else ()
        await call(args.queue, *extra, node=args.node)
        where = f"node {args.node}" if args.node else "every node"
        print(f"{args.action}: queue {args.queue} on {where}")
        return 0
    finally:
        await app.stop()


async def check_names(
    app: Kerrera, action: str, queue: str, node: str | None, *, force: bool
) -> list[str]:
    """Refuse a queue (or node) name nothing has used, most likely a typo: a command
    for it would be persisted and wait, unnoticed, for a node of that name. Close names
    are suggested; `--force` goes ahead. `start` may name a new queue (that is how one is
    started everywhere), so it is refused only when the name is close to a known one.
    Returns notes to print (what `--force` let through)."""
    names = await app.known_names()
    notes = []
    for kind, name, known in (("queue", queue, names["queue"]), ("node", node, names["node"])):
        if name is None or name in known:
            continue
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        unseen = (
            f"no node runs queue {name!r} and no job or queue command has used it{hint}"
            if kind == "queue" else f"no live node is named {name!r}{hint}"
        )  # fmt: skip
        if force:
            notes.append(f"{unseen}; --force: {action} saved for when it appears")
        elif kind == "queue" and action == "start" and not close:
            notes.append(f"queue {name!r} is new: starting it on every node that hears this")
        else:
            raise ConfigError(f"queues {action}: {unseen}; add --force to {action} it anyway")
    return notes


async def queue_report(app: Kerrera, *, fresh: float = 1.0) -> list[dict[str, Any]]:
    """Every queue on every live node (`check_all_queues` rows), each with its queue's
    unfinished job counts (`available`, `scheduled`, `retryable`, `executing`,
    `suspended`: per queue, the same on each of its nodes). A queue with unfinished
    jobs but no live node gets a row too, with `node` None. Sorted by queue, then node."""
    rows = await app.check_all_queues(fresh=fresh)
    counts = await app.count_jobs()
    served = {row["queue"] for row in rows}
    for queue in sorted(set(counts) - served):
        rows.append({
            "node": None, "queue": queue, "uuid": None, "started_at": None,
            "updated_at": None, "limit": None, "running": None, "paused": None,
            "started": False, "counts": {},
        })  # fmt: skip
    zero = dict.fromkeys(UNFINISHED, 0)
    for row in rows:
        row.update(counts.get(row["queue"], zero))
    return sorted(rows, key=lambda r: (r["queue"], r["node"] or ""))


def _cells(row: dict[str, Any]) -> list[Cell]:
    def number(key: str) -> str:
        value = row.get(key)
        return "-" if value is None else str(value)

    waiting: Cell = (number("available"), "bold" if row.get("available") else "")
    paused = row.get("paused")
    flag: Cell = ("-", "") if paused is None else ("yes", "yellow") if paused else ("no", "")
    node: Cell = (str(row["node"]), "") if row["node"] is not None else ("(none)", "red")
    return [
        str(row["queue"]), node, number("limit"), number("running"), waiting,
        number("scheduled"), number("retryable"), flag,
    ]  # fmt: skip
