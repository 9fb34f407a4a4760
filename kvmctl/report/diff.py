"""Line up two or more reports figure by figure (`kvmctl report diff`).

The first report is the baseline; every other one is compared with it.

Noise rule: a figure's value is the mean of its repeats when the report has
any, else the headline value. When at least one side has two or more repeats,
the pooled standard deviation is
    sd = sqrt(sum((n_i - 1) * s_i**2) / sum(n_i - 1))   over sides with n_i >= 2
and a difference is *within noise* when |delta| <= 2 * sd (about a 95% band
for normally distributed run-to-run noise). Without repeats on either side
the noise is unknown and the verdict says so.
"""

from __future__ import annotations

import enum
import math
import statistics
import textwrap
from dataclasses import asdict, dataclass
from typing import Any

from kvmctl.report.figures import HEADLINE, Figure, Unit, get_figure
from kvmctl.report.fmt import fmt_value, fmt_whole
from kvmctl.report.schema import Report
from kvmctl.report.textual import WIDTH

NOISE_SIGMAS = 2.0


class Noise(str, enum.Enum):
    WITHIN = "within"
    BEYOND = "BEYOND"
    UNKNOWN = "no reps"
    NA = "-"


@dataclass
class Side:
    value: float | None
    n: int  # repeats carrying this figure
    sd: float | None  # sample stddev of the repeats (n >= 2)


@dataclass
class FigureDiff:
    key: str
    label: str
    base: Side
    other: Side
    delta: float | None
    relative: float | None  # delta / |base|
    pooled_sd: float | None
    noise: str


def side(report: Report, fig: Figure) -> Side:
    values = [r[fig.key] for r in report.repeats if r.get(fig.key) is not None]
    if values:
        sd = statistics.stdev(values) if len(values) >= 2 else None
        return Side(statistics.fmean(values), len(values), sd)
    value = get_figure(report, fig.key)
    return Side(None if value is None else float(value), 0, None)


def pooled_sd(sides: list[Side]) -> float | None:
    parts = [(s.n - 1, s.sd) for s in sides if s.n >= 2 and s.sd is not None]
    dof = sum(d for d, _ in parts)
    if not dof:
        return None
    return math.sqrt(sum(d * sd * sd for d, sd in parts) / dof)


def compare_figure(base: Report, other: Report, fig: Figure) -> FigureDiff:
    a, b = side(base, fig), side(other, fig)
    if a.value is None or b.value is None:
        return FigureDiff(fig.key, fig.label, a, b, None, None, None, Noise.NA)
    delta = b.value - a.value
    relative = delta / abs(a.value) if a.value else None
    sd = pooled_sd([a, b])
    if sd is None:
        noise = Noise.UNKNOWN
    else:
        noise = Noise.WITHIN if abs(delta) <= NOISE_SIGMAS * sd else Noise.BEYOND
    return FigureDiff(fig.key, fig.label, a, b, delta, relative, sd, noise)


def compare(base: Report, other: Report) -> list[FigureDiff]:
    return [compare_figure(base, other, fig) for fig in HEADLINE]


def context_differences(base: Report, other: Report) -> list[str]:
    """Spec and host facts that differ: what the comparison is really about."""
    out = []
    for what, a, b in (("spec", base.spec, other.spec), ("host", asdict(base.host), asdict(other.host))):
        for key in sorted(set(a) | set(b), key=str):
            va, vb = a.get(key), b.get(key)
            if va == vb:
                continue
            if isinstance(va, dict) and isinstance(vb, dict):  # name the sub-keys that differ
                out += [f"{what}.{key}.{k}: {va.get(k)} -> {vb.get(k)}" for k in sorted(set(va) | set(vb), key=str)
                        if va.get(k) != vb.get(k)]
                continue
            show = [getattr(v, "value", v) for v in (va, vb)]
            out.append(f"{what}.{key}: {show[0]} -> {show[1]}")
    return out


def shown(value: float | None, unit: Unit) -> str:
    """A side's value; a mean of counts stays in whole units (pages, calls)."""
    return fmt_whole(value) if unit is Unit.COUNT else fmt_value(value, unit)


def signed(value: float, unit: Unit) -> str:
    if unit is Unit.FRACTION:
        return f"{100 * value:+.2f}pp"
    return ("-" if value < 0 else "+") + shown(abs(value), unit)


def cells(d: FigureDiff, unit: Unit) -> tuple[str, str, str, str, str]:
    """(A, B, delta, rel, noise) of one row, as text."""
    return (shown(d.base.value, unit), shown(d.other.value, unit), "-" if d.delta is None else signed(d.delta, unit),
            "-" if d.relative is None else f"{100 * d.relative:+.1f}%", d.noise.value)


def _describe(label: str, path: str, report: Report) -> str:
    h = report.host
    mmu = h.mmu.value if h.mmu else "mmu ?"
    reps = f"{len(report.repeats)} repeats" if report.repeats else "no repeats"
    done = "" if report.complete else ", INCOMPLETE"
    return f"{label}  {path}: Linux {h.kernel_release or '?'}, {mmu}, {reps}{done}"


def side_labels(n: int) -> list[str]:
    """A, B, C, ... for the reports of a comparison (the first is the baseline)."""
    return [chr(ord("A") + i) if i < 26 else f"R{i}" for i in range(n)]


def _table(base_label: str, label: str, diffs: list[FigureDiff]) -> list[str]:
    """Columns as wide as their widest cell, numbers right-aligned under their headers."""
    units = {f.key: f.unit for f in HEADLINE}
    head = ("figure", base_label, label, "delta", "rel", "noise")
    rows = [(d.label, *cells(d, units[d.key])) for d in diffs]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = []
    for r in [head, *rows]:
        lines.append("  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]))
    return lines


def _wrapped(text: str, indent: str = "  ") -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=indent, subsequent_indent=indent + "    ",
                         break_on_hyphens=False)


def render_diff(reports: list[tuple[str, Report]]) -> str:
    labels = side_labels(len(reports))
    lines = ["== kvmctl report diff ".ljust(WIDTH, "=")]
    for label, (path, report) in zip(labels, reports):
        lines += _wrapped(_describe(label, path, report), "")
    base_label, (_, base) = labels[0], reports[0]
    for label, (_, other) in zip(labels[1:], reports[1:]):
        lines += ["", f"-- {label} vs {base_label} ".ljust(WIDTH, "-")]
        for diff in context_differences(base, other):
            lines += _wrapped(f"differs: {diff}")
        lines += _table(base_label, label, compare(base, other))
    lines += [
        "",
        "values: mean of the repeats where a report has them, else its headline figure;",
        "        counts in whole units",
        f"noise: 'within' when |delta| <= {NOISE_SIGMAS:g} x pooled stddev of the repeats;",
        "       'no reps' when neither report has 2+ repeats; pp = percentage points;",
        "       - = null in that report ('kvmctl report show' says why)",
    ]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def diff_json(reports: list[tuple[str, Report]]) -> dict[str, Any]:
    base_path, base = reports[0]
    return {
        "baseline": base_path,
        "noise_rule": f"|delta| <= {NOISE_SIGMAS:g} * pooled stddev of repeats",
        "comparisons": [
            {
                "report": path,
                "context_differences": context_differences(base, other),
                "figures": [asdict(d) | {"noise": d.noise.value} for d in compare(base, other)],
            }
            for path, other in reports[1:]
        ],
    }
