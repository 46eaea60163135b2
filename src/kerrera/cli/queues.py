"""`kerrera queues`: see every node's queues, and pause, resume, scale, start or stop a
queue across the cluster (or on one node) from any shell."""

from __future__ import annotations

import argparse
import json
from typing import Any

ACTIONS = ("pause", "resume", "scale", "start", "stop")


def add_parser(sub: Any, common: Any) -> None:
    """Register `kerrera queues [ACTION ...]`."""
    queues = sub.add_parser("queues", help="list queues per node, or control one")
    common(queues)
    queues.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    actions = queues.add_subparsers(dest="action", metavar="ACTION")
    for action in ACTIONS:
        verb = actions.add_parser(action, help=f"{action} a queue on every node (or --node)")
        common(verb, nested=True)
        verb.add_argument("queue")
        if action in ("scale", "start"):
            verb.add_argument("limit", type=int)
        verb.add_argument("--node", help="only this node")


async def run(args: argparse.Namespace) -> int:
    """Carry out `kerrera queues ...`."""
    from kerrera._app import Kerrera

    # Never migrate from here: a mistyped --prefix should fail, not create a schema.
    app = Kerrera(args.dsn, prefix=args.prefix, data_dir=args.data_dir, migrate=False)
    try:
        if args.action is None:
            report = await app.check_all_queues()
            print(render(report, as_json=args.json))
            return 0
        call = getattr(app, f"{args.action}_queue")
        extra = (args.limit,) if args.action in ("scale", "start") else ()
        await call(args.queue, *extra, node=args.node)
        where = f"node {args.node}" if args.node else "every node"
        print(f"{args.action}: queue {args.queue} on {where}")
        return 0
    finally:
        await app.stop()


def render(report: list[dict[str, Any]], *, as_json: bool) -> str:
    """The report as a table (or JSON)."""
    if as_json:
        return json.dumps(report, default=str, indent=2)
    if not report:
        return "no live nodes run queues"
    head = ("NODE", "QUEUE", "LIMIT", "RUNNING", "PAUSED")
    rows = [
        (
            str(r["node"]),
            str(r["queue"]),
            str(r["limit"]),
            str(r["running"]),
            "yes" if r["paused"] else "no",
        )
        for r in report
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in (head, *rows)
    )
