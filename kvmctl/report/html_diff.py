"""Two or more reports on one self-contained page: the diff table, then each side's figures and plots.

The first report is the baseline, as in ``kvmctl report diff``; the same noise
rule marks each difference (``report/diff.py``), and a difference beyond the
noise is highlighted.
"""

from __future__ import annotations

from html import escape

from kvmctl.report.diff import NOISE_SIGMAS, Noise, cells, compare, context_differences, side_labels
from kvmctl.report.figures import HEADLINE
from kvmctl.report.html import micro, page, report_sections
from kvmctl.report.schema import Report

_NOISE_CLASS = {Noise.BEYOND: "beyond", Noise.WITHIN: "within", Noise.UNKNOWN: "noreps", Noise.NA: "na"}
_DIFF_CSS = ("<style>tr.beyond td{background:#fff3cd;font-weight:600}tr.within td{color:#555}"
             "section.side{border-top:3px solid #4a6fa5;margin-top:36px}</style>")


def _comparison(base_label: str, label: str, base: Report, other: Report) -> list[str]:
    units = {f.key: f.unit for f in HEADLINE}
    parts = [f"<h2>{escape(label)} vs {escape(base_label)}</h2>"]
    differs = context_differences(base, other)
    if differs:
        parts.append("<p>What differs:</p><ul>" + "".join(f"<li><code>{escape(d)}</code></li>" for d in differs)
                     + "</ul>")
    rows = [f"<table><tr><th>figure</th><th>{escape(base_label)}</th><th>{escape(label)}</th><th>delta</th>"
            "<th>rel</th><th>noise</th></tr>"]
    for d in compare(base, other):
        a, b, delta, rel, noise = cells(d, units[d.key])
        rows.append(f'<tr class="{_NOISE_CLASS[d.noise]}"><th>{escape(d.label)}</th>'
                    + "".join(f'<td class="num">{escape(micro(c))}</td>' for c in (a, b, delta, rel))
                    + f"<td>{escape(noise)}</td></tr>")
    rows.append("</table>")
    return parts + ["\n".join(rows)]


def render_html_diff(reports: list[tuple[str, Report]]) -> str:
    labels = side_labels(len(reports))
    base_label, (_, base) = labels[0], reports[0]
    body = [_DIFF_CSS, "<h1>kvmctl report diff</h1>", "<table>"]
    for label, (path, report) in zip(labels, reports):
        h = report.host
        state = "" if report.complete else " (INCOMPLETE)"
        body.append(f"<tr><th>{escape(label)}</th><td>{escape(path)}</td><td>Linux {escape(h.kernel_release or '?')}"
                    f", {len(report.repeats) or 'no'} repeats{escape(state)}</td></tr>")
    body.append("</table>")
    body.append(f"<p>Values are the mean of a report's repeats, else its headline figure. A difference is "
                f"<em>within</em> noise when |delta| &le; {NOISE_SIGMAS:g} &times; the pooled standard deviation of "
                "the repeats, <em>BEYOND</em> it otherwise (highlighted); <em>no reps</em> when neither side has two "
                "or more repeats.</p>")
    for label, (_, other) in zip(labels[1:], reports[1:]):
        body += _comparison(base_label, label, base, other)
    for i, (label, (path, report)) in enumerate(zip(labels, reports)):
        body.append(f'<section class="side"><h1>{escape(label)}: {escape(path)}</h1>')
        if report.command_line:
            body.append(f"<p><code>{escape(' '.join(report.command_line))}</code></p>")
        body += report_sections(report, prefix=f"{i}-")
        body.append("</section>")
    return page("kvmctl report diff", body)
