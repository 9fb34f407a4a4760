"""Small inline-SVG charts, generated in Python: no scripts, fonts or network.

Every data mark carries ``class="mark"`` plus ``data-x``/``data-y`` (or
``data-value``; ``data-xs``/``data-ys`` on the line of a long series) and a
``<title>`` tooltip, so a test can read the plotted values back out of the
DOM and the page can count what was drawn.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")
WIDTH, HEIGHT = 940, 260  # the width of a report page's card: drawn 1:1, text at its own size
LEFT, RIGHT, TOP, BOTTOM = 78, 16, 28, 44
MAX_POINT_MARKS = 400  # beyond this a series is drawn as a bare line (a 10-minute run has 6,000 samples)

Fmt = Callable[[float], str]


@dataclass
class Series:
    name: str
    xs: Sequence[float]
    ys: Sequence[float]


@dataclass
class Band:
    """A stretch of the x axis to mark behind the data (an ager pass on a time axis)."""

    x0: float
    x1: float
    label: str
    title: str  # the tooltip


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1-2-5 steps)."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    t = start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < hi:
        ticks.append(ticks[-1] + step)
    return ticks


def compact(v: float) -> str:
    """Axis label: 1.2k, 3.4M."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:g}{suffix}"
    return f"{v:g}"


def _open(width: int, height: int, label: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="{escape(label)}">'
    ]


def _axes(ticks_x: list[tuple[float, str]], ticks_y: list[tuple[float, str]], x_label: str, y_label: str,
          width: int, height: int) -> list[str]:
    out = [f'<g class="axes" font-size="11" fill="#333">']
    x0, y0, x1, y1 = LEFT, height - BOTTOM, width - RIGHT, TOP
    out.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#555"/>')
    out.append(f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#555"/>')
    for px, text in ticks_x:
        out.append(f'<line x1="{px:.1f}" y1="{y0}" x2="{px:.1f}" y2="{y0 + 4}" stroke="#555"/>')
        out.append(f'<text x="{px:.1f}" y="{y0 + 16}" text-anchor="middle">{escape(text)}</text>')
    for py, text in ticks_y:
        out.append(f'<line x1="{x0}" y1="{py:.1f}" x2="{x1}" y2="{py:.1f}" stroke="#e4e4e4"/>')
        out.append(f'<text x="{x0 - 6}" y="{py + 4:.1f}" text-anchor="end">{escape(text)}</text>')
    out.append(f'<text x="{(x0 + x1) / 2:.0f}" y="{height - 8}" text-anchor="middle">{escape(x_label)}</text>')
    out.append(
        f'<text x="14" y="{(y0 + y1) / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {(y0 + y1) / 2:.0f})">{escape(y_label)}</text>'
    )
    out.append("</g>")
    return out


def _legend(names: list[str], width: int) -> list[str]:
    out = ['<g class="legend" font-size="12">']
    x = LEFT
    for i, name in enumerate(names):
        color = PALETTE[i % len(PALETTE)]
        out.append(f'<rect x="{x}" y="8" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{x + 16}" y="18">{escape(name)}</text>')
        x += 28 + 7 * len(name)
    out.append("</g>")
    return out


def _bands(bands: Sequence[Band], px: Callable[[float], float], x_min: float, x_max: float, height: int) -> list[str]:
    """Shaded stretches of the x axis, at least 2 px wide so a sub-millisecond pass still shows."""
    out = ['<g class="bands" font-size="10" fill="#555">']
    for b in bands:
        lo, hi = px(max(b.x0, x_min)), px(min(b.x1, x_max))
        if hi < lo:
            continue
        w = max(2.0, hi - lo)
        out.append(f'<rect class="band" x="{lo:.1f}" y="{TOP}" width="{w:.1f}" height="{height - BOTTOM - TOP}" '
                   f'fill="#f2b134" fill-opacity="0.28" data-x0="{b.x0:g}" data-x1="{b.x1:g}">'
                   f"<title>{escape(b.title)}</title></rect>")
        out.append(f'<text x="{lo + 2:.1f}" y="{TOP + 10}">{escape(b.label)}</text>')
    out.append("</g>")
    return out


def line_chart(series: list[Series], *, x_label: str, y_label: str, x_fmt: Fmt = compact, y_fmt: Fmt = compact,
               y_range: tuple[float, float] | None = None, width: int = WIDTH, height: int = HEIGHT,
               bands: Sequence[Band] = ()) -> str:
    xs = [x for s in series for x in s.xs]
    ys = [y for s in series for y in s.ys]
    x_lo, x_hi = min(xs), max(xs)
    if x_hi == x_lo:
        x_hi = x_lo + 1
    y_lo, y_hi = y_range if y_range else (min(0.0, min(ys)), max(ys))
    y_ticks = nice_ticks(y_lo, y_hi) if not y_range else [y_lo + (y_hi - y_lo) * i / 4 for i in range(5)]
    y_lo, y_hi = y_ticks[0], y_ticks[-1]

    def px(x: float) -> float:
        return LEFT + (x - x_lo) / (x_hi - x_lo) * (width - LEFT - RIGHT)

    def py(y: float) -> float:
        return height - BOTTOM - (y - y_lo) / (y_hi - y_lo) * (height - BOTTOM - TOP)

    x_ticks = [t for t in nice_ticks(x_lo, x_hi, 8) if x_lo <= t <= x_hi]
    if all(float(x).is_integer() for x in xs):  # passes, epochs: no "pass 1.5"
        x_ticks = [t for t in x_ticks if float(t).is_integer()]
    out = _open(width, height, y_label)
    out += _bands(bands, px, x_lo, x_hi, height)
    out += _axes([(px(t), x_fmt(t)) for t in x_ticks], [(py(t), y_fmt(t)) for t in y_ticks], x_label, y_label,
                 width, height)
    for i, s in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(s.xs, s.ys))
        out.append(f'<g class="series" data-series="{escape(s.name)}">')
        if len(s.xs) > MAX_POINT_MARKS:  # a long series: the line itself is the one mark
            xs_text, ys_text = ",".join(f"{x:g}" for x in s.xs), ",".join(f"{y:g}" for y in s.ys)
            out.append(f'<polyline class="mark" fill="none" stroke="{color}" stroke-width="1.5" points="{points}" '
                       f'data-xs="{xs_text}" data-ys="{ys_text}"><title>{escape(s.name)}: {len(s.xs)} points'
                       "</title></polyline>")
            out.append("</g>")
            continue
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>')
        for x, y in zip(s.xs, s.ys):
            out.append(
                f'<circle class="mark" cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}" '
                f'data-x="{x:g}" data-y="{y:g}"><title>{escape(s.name)}: {escape(y_fmt(y))} at '
                f'{escape(x_fmt(x))}</title></circle>'
            )
        out.append("</g>")
    out += _legend([s.name for s in series], width)
    out.append("</svg>")
    return "\n".join(out)


def bar_chart(categories: list[str], series: list[tuple[str, Sequence[float]]], *, x_label: str, y_label: str,
              y_fmt: Fmt = compact, width: int = WIDTH, height: int = HEIGHT,
              tooltips: Sequence[str] | None = None) -> str:
    """Grouped vertical bars, one group per category (``tooltips[i]`` names category i in full)."""
    top = max((v for _, vals in series for v in vals), default=0.0)
    y_ticks = nice_ticks(0.0, top if top > 0 else 1.0)
    y_hi = y_ticks[-1]
    plot_w = width - LEFT - RIGHT
    group_w = plot_w / max(1, len(categories))
    bar_w = max(1.0, group_w * 0.8 / len(series))

    def py(y: float) -> float:
        return height - BOTTOM - y / y_hi * (height - BOTTOM - TOP)

    label_every = max(1, math.ceil(len(categories) * 50 / plot_w))
    x_ticks = [(LEFT + (i + 0.5) * group_w, c) for i, c in enumerate(categories) if i % label_every == 0]
    out = _open(width, height, y_label)
    out += _axes(x_ticks, [(py(t), y_fmt(t)) for t in y_ticks], x_label, y_label, width, height)
    for si, (name, values) in enumerate(series):
        color = PALETTE[si % len(PALETTE)]
        out.append(f'<g class="series" data-series="{escape(name)}">')
        for ci, (cat, v) in enumerate(zip(categories, values)):
            x = LEFT + ci * group_w + group_w * 0.1 + si * bar_w
            out.append(
                f'<rect class="mark" x="{x:.1f}" y="{py(v):.1f}" width="{bar_w:.1f}" '
                f'height="{max(0.0, py(0) - py(v)):.1f}" fill="{color}" data-x="{escape(cat)}" data-y="{v:g}">'
                f"<title>{escape(name)} {escape(tooltips[ci] if tooltips else cat)}: {escape(y_fmt(v))}</title></rect>"
            )
        out.append("</g>")
    if len(series) > 1:
        out += _legend([name for name, _ in series], width)
    out.append("</svg>")
    return "\n".join(out)


def hbar_chart(labels: list[str], values: list[float], *, value_label: str, fmt: Fmt = compact,
               width: int = WIDTH) -> str:
    """Horizontal bars with long labels (callers) on the left."""
    row, label_w = 22, 380
    height = TOP + row * len(labels) + BOTTOM
    top = max(values, default=0.0) or 1.0
    ticks = nice_ticks(0.0, top)
    span = width - label_w - RIGHT - 60

    def px(v: float) -> float:
        return label_w + v / ticks[-1] * span

    out = _open(width, height, value_label)
    out.append('<g font-size="11" fill="#333">')
    for t in ticks:
        out.append(f'<line x1="{px(t):.1f}" y1="{TOP}" x2="{px(t):.1f}" y2="{height - BOTTOM}" stroke="#e4e4e4"/>')
        out.append(f'<text x="{px(t):.1f}" y="{height - BOTTOM + 14}" text-anchor="middle">{escape(fmt(t))}</text>')
    out.append(f'<text x="{label_w + span / 2:.0f}" y="{height - 8}" text-anchor="middle">{escape(value_label)}</text>')
    for i, (label, v) in enumerate(zip(labels, values)):
        y = TOP + i * row
        out.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{escape(label)}</text>')
        out.append(
            f'<rect class="mark" x="{label_w}" y="{y + 3}" width="{max(0.0, px(v) - label_w):.1f}" height="{row - 6}" '
            f'fill="{PALETTE[0]}" data-x="{escape(label)}" data-y="{v:g}"><title>{escape(label)}: '
            f"{escape(fmt(v))}</title></rect>"
        )
        out.append(f'<text x="{px(v) + 4:.1f}" y="{y + 15}">{escape(fmt(v))}</text>')
    out.append("</g></svg>")
    return "\n".join(out)


SCALE_STEPS = 8  # cells of a heat map row's colour scale


def heat_strips(rows: list[tuple[str, Sequence[int]]], *, start_label: str, end_label: str,
                bin_labels: Sequence[str] | None = None, unit: str = "", width: int = WIDTH) -> str:
    """One strip of cells per row, colour scaled to that row's maximum, with the scale drawn after it.

    ``bin_labels[i]`` names what bin i covers (a GPA range) in its tooltip; ``unit`` follows the values.
    """
    strip, gap, label_w, scale_w = 34, 22, 90, 150
    height = TOP + len(rows) * (strip + gap) + 16
    strip_w = width - label_w - RIGHT - scale_w - 16
    out = _open(width, height, "heat map")
    out.append('<g font-size="11" fill="#333" shape-rendering="crispEdges">')
    for ri, (name, values) in enumerate(rows):
        y = TOP + ri * (strip + gap)
        top = max(values, default=0)
        cell = strip_w / max(1, len(values))
        out.append(f'<text x="{label_w - 6}" y="{y + strip / 2 + 4:.0f}" text-anchor="end">{escape(name)}</text>')
        hue = 0 if ri == 0 else 210

        def fill(v: float) -> str:
            return f"hsl({hue},70%,{96 - 66 * (v / (top or 1)):.0f}%)"

        for i, v in enumerate(values):
            where = bin_labels[i] if bin_labels else f"bin {i}"
            out.append(
                f'<rect class="mark" x="{label_w + i * cell:.2f}" y="{y}" width="{cell + 0.3:.2f}" height="{strip}" '
                f'fill="{fill(v)}" data-row="{escape(name)}" data-bin="{i}" data-value="{v}">'
                f"<title>{escape(name)}, {escape(where)}: {v:,}{escape(unit)}</title></rect>"
            )
        # the scale: lightest = 0, darkest = this row's maximum
        x0, step = width - RIGHT - scale_w, scale_w / SCALE_STEPS
        for k in range(SCALE_STEPS):
            v = top * k / (SCALE_STEPS - 1)
            out.append(f'<rect class="scale" x="{x0 + k * step:.1f}" y="{y + 4}" width="{step + 0.3:.1f}" height="14" '
                       f'fill="{fill(v)}"><title>{v:,.0f}{escape(unit)}</title></rect>')
        out.append(f'<text x="{x0}" y="{y + 31}">0</text>')
        out.append(f'<text x="{width - RIGHT}" y="{y + 31}" text-anchor="end">{top:,}{escape(unit)} (max)</text>')
    y_axis = TOP + len(rows) * (strip + gap) - gap + 14
    out.append(f'<text x="{label_w}" y="{y_axis}">{escape(start_label)}</text>')
    out.append(f'<text x="{label_w + strip_w}" y="{y_axis}" text-anchor="end">{escape(end_label)}</text>')
    out.append("</g></svg>")
    return "\n".join(out)
