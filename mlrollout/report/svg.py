"""Small inline-SVG charts for the HTML report, written here rather than with a plotting library.

The core stays dependency-light (pydantic, PyYAML, typer, rich): no matplotlib, no numpy, no
JavaScript. A chart is one ``<svg>`` element as a string, meant to be inlined in an HTML page; it
is also well-formed XML on its own (the tests parse every one). Every text that reaches a chart
(variant and gate names, labels) is escaped here.

Values that are not finite (``None``, ``inf``, ``nan``) break a line instead of bending it, and a
value outside the chart's range is drawn at its edge (an interval of ``±1e302`` at the first look
must not flatten everything else): :func:`value_range` chooses the range from the values that
matter and lets the others clip.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from html import escape

#: Colours that stay apart from each other on white (and for most colour-blind readers).
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")
OUTCOME_COLOUR = {"pass": "#2ca02c", "continue": "#1f77b4", "hold": "#e6a700", "fail": "#d62728"}

Point = tuple[float, float | None]


def finite(value: object) -> float | None:
    """``value`` as a float when it is a finite number, else None (bools are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass
class Series:
    """A line: ``points`` are (x, y) with y None for a gap; ``step`` draws a staircase (the
    value holds until the next point); ``markers`` colours a dot per point (None: no dot)."""

    label: str
    points: list[Point]
    colour: str
    step: bool = False
    dash: str | None = None
    width: float = 2.0
    markers: list[str | None] | None = None


@dataclass
class Whiskers:
    """Intervals drawn as vertical bars: (x, low, high); a missing side ends at ``centre``."""

    label: str
    bars: list[tuple[float, float | None, float | None, float | None]]
    colour: str


@dataclass
class Band:
    """A shaded interval over x: ``(x, low, high)`` points joined into filled areas; a point
    with a bound missing ends an area (as a ``None`` breaks a line)."""

    label: str
    points: list[tuple[float, float | None, float | None]]
    colour: str
    opacity: float = 0.25


@dataclass
class Chart:
    title: str
    series: list[Series]
    x_range: tuple[float, float]
    y_range: tuple[float, float]
    x_format: Callable[[float], str]
    y_format: Callable[[float], str]
    whiskers: list[Whiskers] = field(default_factory=list)
    vlines: list[float] = field(default_factory=list)  # faint markers (traffic changes)
    marks: list[tuple[float, str]] = field(default_factory=list)  # labelled markers (world facts)
    width: int = 520
    height: int = 220
    note: str | None = None  # a line of text under the title (e.g. "no numbers recorded")
    bands: list[Band] = field(default_factory=list)  # shaded intervals, under the lines
    hlines: list[tuple[float, str, str]] = field(default_factory=list)  # (y, label, colour)


LEFT, RIGHT, TOP, BOTTOM = 64, 12, 30, 50


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (1, 2, 2.5 or 5 times a power of ten apart)."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return [low]
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks: list[float] = []
    value = first
    while value <= high + step * 1e-9 and len(ticks) < 50:
        ticks.append(0.0 if abs(value) < step * 1e-9 else value)
        value += step
    return ticks


def time_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Tick values in seconds at round durations (1 min, 5 min, 1 h ...)."""
    span = high - low
    for step in (1, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200):
        if span / step <= count:
            break
    else:
        step = 86400 * max(1, math.ceil(span / 86400 / count))
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) // step) + 1)]


def value_range(
    core: Iterable[float | None],
    extra: Iterable[float | None] = (),
    *,
    floor: float | None = None,
    stretch: float = 1.0,
) -> tuple[float, float]:
    """A y range that holds every ``core`` value and the ``extra`` ones (interval bounds,
    evidence) only as far as ``stretch`` times the core's span beyond it; ``floor`` (0 for rates
    and latencies) is included when given."""
    values = [v for v in core if v is not None]
    if floor is not None:
        values.append(floor)
    if not values:
        values = [0.0, 1.0]
    low, high = min(values), max(values)
    span = (high - low) or abs(high) or 1.0
    others = [v for v in extra if v is not None]
    if others:
        low = min(low, max(min(others), low - stretch * span))
        high = max(high, min(max(others), high + stretch * span))
    pad = (high - low) * 0.06 or 1.0
    return (low if floor is not None and low >= floor else low - pad, high + pad)


def _num(value: float) -> str:
    return f"{value:.1f}"


def render(chart: Chart) -> str:
    """The chart as one ``<svg>`` element."""
    w, h = chart.width, chart.height
    x0, x1 = chart.x_range
    y0, y1 = chart.y_range
    if x1 <= x0:
        x1 = x0 + 1.0
    if y1 <= y0:
        y1 = y0 + 1.0
    plot_w, plot_h = w - LEFT - RIGHT, h - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (min(max(x, x0), x1) - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return TOP + plot_h - (min(max(y, y0), y1) - y0) / (y1 - y0) * plot_h

    out = [
        f'<svg class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
        f'aria-label="{escape(chart.title)}" font-family="sans-serif" font-size="11">',
        f"<title>{escape(chart.title)}</title>",
        f'<text x="{LEFT}" y="16" font-size="13" font-weight="bold">{escape(chart.title)}</text>',
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fbfbfb" '
        'stroke="#bbbbbb"/>',
    ]
    for tick in nice_ticks(y0, y1):
        y = sy(tick)
        out.append(
            f'<line x1="{LEFT}" y1="{_num(y)}" x2="{LEFT + plot_w}" y2="{_num(y)}" '
            'stroke="#e4e4e4"/>'
        )
        out.append(
            f'<text x="{LEFT - 4}" y="{_num(y + 4)}" text-anchor="end">'
            f"{escape(chart.y_format(tick))}</text>"
        )
    for tick in time_ticks(x0, x1):
        x = sx(tick)
        out.append(
            f'<line x1="{_num(x)}" y1="{TOP + plot_h}" x2="{_num(x)}" y2="{TOP + plot_h + 4}" '
            'stroke="#888888"/>'
        )
        out.append(
            f'<text x="{_num(x)}" y="{TOP + plot_h + 16}" text-anchor="middle">'
            f"{escape(chart.x_format(tick))}</text>"
        )
    for vline in chart.vlines:
        x = sx(vline)
        out.append(
            f'<line x1="{_num(x)}" y1="{TOP}" x2="{_num(x)}" y2="{TOP + plot_h}" '
            'stroke="#c8c8c8" stroke-dasharray="2 3"/>'
        )
    for at, label in chart.marks:
        mx = _num(sx(at))
        out.append(
            f'<line x1="{mx}" y1="{TOP}" x2="{mx}" y2="{TOP + plot_h}" stroke="#9467bd" '
            'stroke-width="1.5" stroke-dasharray="5 3"/>'
        )
        out.append(
            f'<text x="{mx}" y="{TOP - 3}" text-anchor="middle" fill="#9467bd">'
            f"{escape(label)}</text>"
        )
    if chart.note:
        out.append(
            f'<text x="{LEFT + plot_w / 2:.1f}" y="{TOP + plot_h / 2:.1f}" text-anchor="middle" '
            f'fill="#777777">{escape(chart.note)}</text>'
        )
    for band in chart.bands:
        for run in _band_runs(band.points):
            upper = [f"{_num(sx(x))},{_num(sy(high))}" for x, _, high in run]
            lower = [f"{_num(sx(x))},{_num(sy(low))}" for x, low, _ in reversed(run)]
            out.append(
                f'<polygon points="{" ".join(upper + lower)}" fill="{band.colour}" '
                f'fill-opacity="{band.opacity:g}" stroke="none"/>'
            )
    for i, (y, label, line_colour) in enumerate(chart.hlines):
        py = _num(sy(y))
        out.append(
            f'<line x1="{LEFT}" y1="{py}" x2="{LEFT + plot_w}" y2="{py}" stroke="{line_colour}" '
            'stroke-width="1.2" stroke-dasharray="4 3"/>'
        )
        if label:
            # alternate ends, so that labels of nearby lines do not overlap
            tx, anchor = (LEFT + plot_w - 2, "end") if i % 2 == 0 else (LEFT + 4, "start")
            out.append(
                f'<text x="{tx}" y="{_num(sy(y) - 3)}" text-anchor="{anchor}" '
                f'fill="{line_colour}">{escape(label)}</text>'
            )
    for whisker in chart.whiskers:
        for x, low, high, centre in whisker.bars:
            bottom = low if low is not None else centre
            top = high if high is not None else centre
            if bottom is None or top is None:
                continue
            px = _num(sx(x))
            out.append(
                f'<line x1="{px}" y1="{_num(sy(bottom))}" x2="{px}" y2="{_num(sy(top))}" '
                f'stroke="{whisker.colour}" stroke-opacity="0.45" stroke-width="6" '
                'stroke-linecap="round"/>'
            )
    for series in chart.series:
        for segment in _segments(series.points, step=series.step):
            path = " ".join(f"{_num(sx(x))},{_num(sy(y))}" for x, y in segment)
            dash = f' stroke-dasharray="{series.dash}"' if series.dash else ""
            out.append(
                f'<polyline points="{path}" fill="none" stroke="{series.colour}" '
                f'stroke-width="{series.width}"{dash} stroke-linejoin="round"/>'
            )
        for (mx_, my_), colour in zip(series.points, series.markers or [], strict=False):
            if my_ is not None and colour is not None:
                out.append(
                    f'<circle cx="{_num(sx(mx_))}" cy="{_num(sy(my_))}" r="3.2" fill="{colour}" '
                    'stroke="#ffffff" stroke-width="0.8"/>'
                )
    out.extend(_legend(chart, plot_h))
    out.append("</svg>")
    return "\n".join(out)


def _segments(points: Sequence[Point], *, step: bool) -> list[list[tuple[float, float]]]:
    """The drawable runs of ``points`` (a None y ends a run); a step line holds each value."""
    runs: list[list[tuple[float, float]]] = []
    run: list[tuple[float, float]] = []
    for x, y in points:
        if y is None:
            if run:
                runs.append(run)
            run = []
            continue
        if step and run:
            run.append((x, run[-1][1]))
        run.append((x, y))
    if run:
        runs.append(run)
    return runs


def _band_runs(
    points: Sequence[tuple[float, float | None, float | None]],
) -> list[list[tuple[float, float, float]]]:
    """The drawable runs of a band (a missing bound ends a run; a run needs two points)."""
    runs: list[list[tuple[float, float, float]]] = []
    run: list[tuple[float, float, float]] = []
    for x, low, high in points:
        if low is None or high is None:
            if len(run) > 1:
                runs.append(run)
            run = []
            continue
        run.append((x, low, high))
    if len(run) > 1:
        runs.append(run)
    return runs


def _legend(chart: Chart, plot_h: int) -> list[str]:
    items: list[tuple[str, str, str | None, bool]] = [
        (s.label, s.colour, s.dash, False) for s in chart.series if s.label
    ]
    items += [(wk.label, wk.colour, None, True) for wk in chart.whiskers if wk.label]
    items += [(bd.label, bd.colour, None, True) for bd in chart.bands if bd.label]
    out: list[str] = []
    x, y = float(LEFT), float(TOP + plot_h + 34)
    for label, colour, dash, bar in items:
        text = escape(label)
        room = 30 + 6.2 * len(label)
        if x + room > chart.width - RIGHT and x > LEFT:
            x, y = float(LEFT), y + 14
        if bar:
            out.append(
                f'<line x1="{_num(x)}" y1="{_num(y - 4)}" x2="{_num(x + 18)}" y2="{_num(y - 4)}" '
                f'stroke="{colour}" stroke-opacity="0.45" stroke-width="6"/>'
            )
        else:
            extra = f' stroke-dasharray="{dash}"' if dash else ""
            out.append(
                f'<line x1="{_num(x)}" y1="{_num(y - 4)}" x2="{_num(x + 18)}" y2="{_num(y - 4)}" '
                f'stroke="{colour}" stroke-width="2"{extra}/>'
            )
        out.append(f'<text x="{_num(x + 22)}" y="{_num(y)}">{text}</text>')
        x += room
    return out
