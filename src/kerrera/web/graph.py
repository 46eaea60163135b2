"""A workflow as a layered graph: each step in the column of its longest path from a
first step, edges from what it waits on, drawn as inline SVG with the live state of
every step (colours from the stylesheet's `state-*` classes).

A step's `meta` says what it is: `name`, `deps` (names it waits for: a step, a group,
a sub-workflow or a graft) and `announces` (every name it counts toward). A dependency
on a name is an edge from every step that announces it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from markupsafe import Markup, escape

from kerrera.core.job import Job

#: Steps drawn at most; a bigger workflow is shown as its table only.
MAX_NODES = 400
BOX_W, BOX_H, GAP_X, GAP_Y, PAD = 170, 38, 60, 14, 10


@dataclass(slots=True)
class Step:
    """One step of the drawing."""

    job: Job
    name: str
    deps: list[str]
    preds: list[int] = field(default_factory=list)  # indexes of the steps it waits on
    depth: int = 0
    row: int = 0


def layout(jobs: Sequence[Job]) -> list[Step]:
    """The steps of a workflow with their predecessors, column (`depth`) and `row`."""
    steps = [
        Step(job, str(job.meta.get("name") or job.id), [str(d) for d in job.meta.get("deps") or []])
        for job in jobs
    ]
    announcers: dict[str, list[int]] = {}
    for i, step in enumerate(steps):
        for name in step.job.meta.get("announces") or [step.name]:
            announcers.setdefault(str(name), []).append(i)
    for i, step in enumerate(steps):
        step.preds = sorted({p for d in step.deps for p in announcers.get(d, []) if p != i})
    # Longest path by repeated relaxation: grafted steps come after the steps that wait
    # on them, so insertion order is not an order of the graph; a bound stops any cycle.
    for _ in range(len(steps)):
        moved = False
        for step in steps:
            depth = max((steps[p].depth + 1 for p in step.preds), default=0)
            if depth != step.depth and depth < len(steps):
                step.depth, moved = depth, True
        if not moved:
            break
    rows: dict[int, int] = {}
    for step in steps:
        step.row = rows.get(step.depth, 0)
        rows[step.depth] = step.row + 1
    return steps


def draw(steps: Sequence[Step], base: str) -> Markup:
    """The graph of `steps` (from `layout`) as SVG; each box links to its job."""
    if not steps:
        return Markup("")
    columns = max(s.depth for s in steps) + 1
    rows = max(s.row for s in steps) + 1
    width = PAD * 2 + columns * BOX_W + (columns - 1) * GAP_X
    height = PAD * 2 + rows * BOX_H + (rows - 1) * GAP_Y

    def corner(step: Step) -> tuple[int, int]:
        return PAD + step.depth * (BOX_W + GAP_X), PAD + step.row * (BOX_H + GAP_Y)

    out = [
        f'<svg class="dag" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="Workflow graph">'
    ]
    for step in steps:
        x2, y2 = corner(step)
        for p in step.preds:
            x1, y1 = corner(steps[p])
            a, b = x1 + BOX_W, y1 + BOX_H / 2
            c, d = x2, y2 + BOX_H / 2
            mid = (a + c) / 2
            out.append(
                f'<path class="edge" d="M{a},{b:.1f} C{mid:.1f},{b:.1f} '
                f'{mid:.1f},{d:.1f} {c},{d:.1f}"/>'
            )
    for step in steps:
        x, y = corner(step)
        state = step.job.state.value
        label = step.name if len(step.name) <= 22 else step.name[:21] + "…"
        tip = f"{step.name} · {state} · job {step.job.id} · {step.job.worker}"
        out.append(
            f'<a href="{escape(base)}/jobs/{step.job.id}" class="step" '
            f'data-step="{escape(step.name)}" data-state="{state}"><title>{escape(tip)}</title>'
            f'<rect class="box state-{state}" x="{x}" y="{y}" width="{BOX_W}" '
            f'height="{BOX_H}" rx="6"/>'
            f'<text class="name" x="{x + 10}" y="{y + 16}">{escape(label)}</text>'
            f'<text class="what" x="{x + 10}" y="{y + 30}">{state} · #{step.job.id}</text></a>'
        )
    out.append("</svg>")
    return Markup("".join(out))
