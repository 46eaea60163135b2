"""Charts and graphs drawn on the server as inline SVG: no script library, nothing for the
Content-Security-Policy to allow. Colours come from CSS classes (`s0`..`s7`, `state-*`),
so the light and dark themes apply; every text is escaped.

Example:
    line_chart([Series("completed", [3, 5, None, 2])], labels=["10:00", ...], unit="/min")
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

#: Distinct series colours the stylesheet defines (`.s0` .. `.s7`).
PALETTE = 8


@dataclass(frozen=True, slots=True)
class Series:
    """One line of a chart: a name for the legend and one value per point (None: no
    data there, the line breaks)."""

    name: str
    values: Sequence[float | None]


def nice_max(value: float, unit: str = "") -> float:
    """The smallest 1, 2, 4, 6 or 8 times a power of ten at or above `value`: an axis
    top whose quarters are round too. Milliseconds round in the unit they are shown in
    (seconds, minutes), so that an axis reads 2 min, not 2.08 min."""
    if value <= 0:
        return 1.0
    scale = 1.0
    if unit == "ms":
        scale = 60_000.0 if value >= 60_000 else 1000.0 if value >= 1000 else 1.0
    value /= scale
    power = float(10 ** math.floor(math.log10(value)))
    for step in (1, 2, 4, 6, 8, 10):
        if step * power >= value * (1 - 1e-9):
            return step * power * scale
    return 10 * power * scale  # pragma: no cover - the loop always returns


def number(value: float, unit: str = "") -> str:
    """A value for an axis or a tooltip: `1.2k`, `850`, `3.5`; `ms` values as `1.2 s`."""
    if unit == "ms":
        if value >= 60_000:
            return f"{value / 60_000:.3g} min"
        if value >= 1000:
            return f"{value / 1000:.3g} s"
        return f"{value:.3g} ms"
    if value >= 1_000_000:
        text = f"{value / 1_000_000:.3g}M"
    elif value >= 1000:
        text = f"{value / 1000:.3g}k"
    else:
        text = f"{value:.3g}"
    return text + unit


def line_chart(
    series: Sequence[Series],
    labels: Sequence[str],
    *,
    unit: str = "",
    title: str = "",
    width: int = 1100,
    height: int = 220,
) -> Markup:
    """A line chart of `series` over points labelled `labels` (a few shown on the x
    axis), y from 0 to a round maximum, each point with a tooltip."""
    left, right, top, bottom = 56, 12, 10, 24
    plot_w, plot_h = width - left - right, height - top - bottom
    points = len(labels)
    peak = max((v for s in series for v in s.values if v is not None), default=0.0)
    top_value = nice_max(peak, unit)

    def x(i: int) -> float:
        return left + (plot_w * i / (points - 1) if points > 1 else plot_w / 2)

    def y(v: float) -> float:
        return top + plot_h * (1 - v / top_value)

    out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" preserveAspectRatio="none">'
    ]
    for k in range(5):  # horizontal grid and y labels
        tick = top_value * k / 4
        out.append(
            f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" '
            f'y2="{y(tick):.1f}"/><text class="axis" x="{left - 6}" y="{y(tick) + 4:.1f}" '
            f'text-anchor="end">{escape(number(tick, unit))}</text>'
        )
    shown = sorted({round(i * (points - 1) / 5) for i in range(6)}) if points > 1 else [0]
    for i in shown if points else []:
        # The end labels sit inside the plot, so that none is cut at the edge.
        anchor = "start" if i == 0 and points > 1 else "end" if i == points - 1 else "middle"
        out.append(
            f'<text class="axis" x="{x(i):.1f}" y="{height - 6}" text-anchor="{anchor}">'
            f"{escape(labels[i])}</text>"
        )
    for n, line in enumerate(series):
        cls = f"s{n % PALETTE}"
        for run in _runs(line.values):
            coords = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in run)
            if len(run) == 1:
                i, v = run[0]
                out.append(f'<circle class="line {cls}" cx="{x(i):.1f}" cy="{y(v):.1f}" r="2"/>')
            else:
                out.append(f'<polyline class="line {cls}" points="{coords}"/>')
        for i, value in enumerate(line.values):
            if value is not None and points:
                tip = f"{line.name} · {labels[i]} · {number(value, unit)}"
                out.append(
                    f'<circle class="dot {cls}" cx="{x(i):.1f}" cy="{y(value):.1f}" r="5">'
                    f"<title>{escape(tip)}</title></circle>"
                )
    out.append("</svg>")
    return Markup("".join(out))


def _runs(values: Sequence[float | None]) -> list[list[tuple[int, float]]]:
    """Stretches of consecutive points that have a value (a line breaks at None)."""
    runs: list[list[tuple[int, float]]] = []
    current: list[tuple[int, float]] = []
    for i, v in enumerate(values):
        if v is None:
            if current:
                runs.append(current)
            current = []
        else:
            current.append((i, float(v)))
    if current:
        runs.append(current)
    return runs


def legend(series: Sequence[Series]) -> Markup:
    """The names of `series` with their colours, as an HTML list."""
    items = "".join(
        f'<li><span class="swatch s{n % PALETTE}"></span>{escape(s.name)}</li>'
        for n, s in enumerate(series)
    )
    return Markup(f'<ul class="legend">{items}</ul>')


def sparkline(values: Sequence[float], *, width: int = 120, height: int = 24) -> Markup:
    """A small line of `values` (e.g. jobs finished per bin), scaled to its own peak."""
    if not values:
        return Markup("")
    peak = max(values) or 1.0
    step = width / max(len(values) - 1, 1)
    coords = " ".join(
        f"{i * step:.1f},{height - 2 - (height - 4) * v / peak:.1f}" for i, v in enumerate(values)
    )
    total = sum(values)
    return Markup(
        f'<svg class="spark" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{total:g} finished in the last hour">'
        f"<title>{total:g} finished in the last hour (peak {peak:g} per bin)</title>"
        f'<polyline class="line s0" points="{coords}"/></svg>'
    )
