"""`kerrera workflows`: the newest workflows with their steps per state (`list`), and
one workflow's steps, what each waits on, and their live state (`show ID`)."""

from __future__ import annotations

import argparse
from typing import Any

from kerrera.cli._render import STATE_STYLES, Cell, Output, cut
from kerrera.core.job import UNFINISHED

#: The order states are counted in, in a row of `list`.
ORDER = ("completed", "executing", "available", "scheduled", "retryable", "suspended",
         "cancelled", "discarded")  # fmt: skip


def add_parser(sub: Any, common: Any) -> None:
    """Register `kerrera workflows list|show`."""
    parser = sub.add_parser("workflows", help="list workflows, or show one's steps")
    common(parser)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="the newest workflows, with steps per state")
    common(listing, nested=True)
    listing.add_argument("--limit", type=int, default=20, help="how many (20)")
    listing.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    show = actions.add_parser("show", help="one workflow: each step, its deps and state")
    common(show, nested=True)
    show.add_argument("id", help="the workflow id")
    show.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    show.add_argument("--mermaid", action="store_true", help="print a Mermaid flowchart")


async def run(args: argparse.Namespace) -> int:
    """Carry out `kerrera workflows ...`."""
    from kerrera.app.facade import Kerrera

    app = Kerrera(args.dsn, prefix=args.prefix, data_dir=args.data_dir, migrate=False)
    out = Output()
    try:
        if args.action == "list":
            if args.limit < 1:
                raise ValueError("option '--limit' must be at least 1")
            rows = await app.workflows(args.limit)
            if args.json:
                out.json([{"id": i, "name": n, "inserted_at": at, "states": s}
                          for i, n, at, s in rows])  # fmt: skip
                return 0
            if not rows:
                out.line("no workflows")
                return 0
            table: list[list[Cell]] = []
            for wf_id, name, at, states in rows:
                done = not any(states.get(s) for s in UNFINISHED)
                table.append([
                    wf_id, name or "", at.strftime("%Y-%m-%d %H:%M:%S"),
                    ("finished", "green") if done else ("running", "yellow"),
                    summary(states),
                ])  # fmt: skip
            out.table(("ID", "NAME", "INSERTED (UTC)", "STATE", "STEPS"), table,
                      squeeze=[(0, cut, 12), (1, cut, 10), (4, cut, 20)])  # fmt: skip
            return 0
        handle = app.workflow(args.id)
        status = await handle.status()
        jobs = await handle.jobs()
        if args.json:
            out.json({
                "id": status.id, "name": status.name, "state": status.state,
                "states": status.states, "duration": status.duration,
                "steps": [{"name": j.meta.get("name"), "id": j.id, "state": str(j.state),
                           "worker": j.worker, "deps": j.meta.get("deps", [])} for j in jobs],
            })  # fmt: skip
            return 0
        if args.mermaid:
            out.line(mermaid(jobs))
            return 0
        took = "" if status.duration is None else f", took {status.duration:.1f} s"
        out.line(f"workflow {status.id}" + (f" ({status.name})" if status.name else ""))
        out.line(f"{status.state}: {summary(status.states)}{took}")
        steps: list[list[Cell]] = [
            [str(j.meta.get("name")), str(j.id), (str(j.state), STATE_STYLES.get(str(j.state), "")),
             j.worker, ", ".join(j.meta.get("deps") or [])]
            for j in jobs
        ]  # fmt: skip
        out.table(("STEP", "JOB", "STATE", "WORKER", "WAITS ON"), steps, right={1},
                  squeeze=[(3, cut, 16), (4, cut, 12), (0, cut, 12)])  # fmt: skip
        return 0
    finally:
        await app.stop()


def summary(states: dict[str, int]) -> str:
    """`12 completed, 3 executing, ...` in a fixed order."""
    parts = [f"{states[s]} {s}" for s in ORDER if states.get(s)]
    return ", ".join(parts) or "no steps"


def mermaid(jobs: list[Any]) -> str:
    """A flowchart of stored steps, each labelled with its live state."""
    ids = {str(j.meta.get("name")): f"j{j.id}" for j in jobs}
    lines = ["flowchart TD"]
    for j in jobs:
        name = str(j.meta.get("name")).replace('"', "'")
        lines.append(f'    j{j.id}["{name}: {j.state}"]')
    for j in jobs:
        for dep in j.meta.get("deps") or []:
            for other in jobs:
                if dep in (other.meta.get("announces") or [other.meta.get("name")]):
                    lines.append(f"    {ids[str(other.meta.get('name'))]} --> j{j.id}")
    return "\n".join(lines)
