"""One self-contained HTML page per report: tables plus inline-SVG plots.

Nothing is fetched at view time (no CDN, fonts or images), so the file can
be mailed or attached to a bug. A few lines of inline JavaScript check after
load that every plot drew its marks and has a non-empty box, and mark each
``<figure class="plot">`` with ``data-rendered`` ("1", "0" or "empty"), which
the browser test reads back.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from kvmctl.report import svg
from kvmctl.report.schema import Report
from kvmctl.report.figures import HEADLINE, get_figure
from kvmctl.report.fmt import fmt_count, fmt_fraction, fmt_ns, fmt_value, hist_unit_label, null_text
from kvmctl.report.textual import render_text
from kvmctl.units import format_size


@dataclass
class Plot:
    plot_id: str
    title: str
    svg: str | None  # None: nothing to plot, see reason
    reason: str = ""

    @property
    def marks(self) -> int:
        return self.svg.count('class="mark"') if self.svg else 0


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1000px;color:#222;padding:0 12px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;border-bottom:1px solid #ccc;padding-bottom:3px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left;
vertical-align:top}td.num{text-align:right;font-variant-numeric:tabular-nums}.na{color:#8a5a00;font-style:italic}
.status-incomplete{color:#b00;font-weight:bold}figure.plot{margin:16px 0;padding:8px;border:1px solid #e4e4e4}
figcaption{font-weight:600;margin-bottom:4px}svg{max-width:100%;height:auto}pre{font-size:12px;overflow-x:auto}
"""

_JS = """
(function () {
  var errors = [];
  window.addEventListener('error', function (e) { errors.push(String(e.message)); });
  function check() {
    var ok = 0, bad = 0;
    document.querySelectorAll('figure.plot').forEach(function (fig) {
      var expected = Number(fig.getAttribute('data-expected-marks'));
      if (expected === 0) { fig.setAttribute('data-rendered', 'empty'); return; }
      var svgEl = fig.querySelector('svg');
      var marks = svgEl ? svgEl.querySelectorAll('.mark').length : 0;
      var box = svgEl ? svgEl.getBBox() : null;
      var drawn = box !== null && box.width > 0 && box.height > 0;
      if (marks === expected && drawn) { fig.setAttribute('data-rendered', '1'); ok++; }
      else {
        fig.setAttribute('data-rendered', '0'); bad++;
        console.error('plot ' + fig.id + ' did not render: ' + marks + '/' + expected + ' marks');
      }
    });
    document.body.setAttribute('data-plots-rendered', String(ok));
    document.body.setAttribute('data-plots-failed', String(bad));
    document.body.setAttribute('data-errors', errors.join('; '));
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', check); else check();
})();
"""


def _seconds(ns: float) -> str:
    return f"{ns:g} s"


def _pct(v: float) -> str:
    return f"{v:g}%"


def _aging_plots(report: Report) -> list[Plot]:
    a = report.aging
    series = a.series
    reason = null_text(report, "aging.calls") if a.calls is None else "no aging time series was recorded"
    if not series:
        return [Plot("aging-calls", "Aging calls over time", None, reason),
                Plot("aging-pages", "Pages aged over time", None, reason),
                Plot("aging-background", "Background vs experiment aging", None, reason)]
    xs = [s.t_offset_ns / 1e9 for s in series]
    per = f" per {a.interval_ns / 1e9:g} s" if a.interval_ns else " per interval"
    return [
        Plot("aging-calls", f"Aging calls{per}", svg.line_chart(
            [svg.Series("calls", xs, [s.calls for s in series])], x_label="seconds since probes attached",
            y_label="aging calls", x_fmt=_seconds)),
        Plot("aging-pages", f"Guest pages aged{per}", svg.line_chart(
            [svg.Series("pages", xs, [s.pages for s in series])], x_label="seconds since probes attached",
            y_label="pages aged", x_fmt=_seconds)),
        Plot("aging-background", f"Experiment vs background aging calls{per}", svg.line_chart(
            [svg.Series("experiment", xs, [s.calls - s.background_calls for s in series]),
             svg.Series("background", xs, [s.background_calls for s in series])],
            x_label="seconds since probes attached", y_label="aging calls", x_fmt=_seconds)),
    ]


def _pass_plots(report: Report) -> list[Plot]:
    passes = report.passes
    res = [p for p in passes if p.hot_resident_fraction is not None or p.cold_resident_fraction is not None]
    if res:
        lines = []
        for name, attr in (("hot resident", "hot_resident_fraction"), ("cold resident", "cold_resident_fraction")):
            pts = [(p.pass_no, 100 * getattr(p, attr)) for p in res if getattr(p, attr) is not None]
            if pts:
                lines.append(svg.Series(name, [x for x, _ in pts], [y for _, y in pts]))
        residency = Plot("residency", "Hot and cold page residency after each pass", svg.line_chart(
            lines, x_label="pass", y_label="resident %", y_fmt=_pct, y_range=(0.0, 100.0)))
    else:
        reason = "no ager passes ran" if not passes else null_text(report, "ground_truth.hot_resident_fraction")
        residency = Plot("residency", "Hot and cold page residency after each pass", None, reason)
    ref = [p for p in passes if p.refaults is not None]
    if ref:
        refaults = Plot("refaults", "Re-faults of evicted pages since the previous pass", svg.bar_chart(
            [str(p.pass_no) for p in ref], [("re-faults", [p.refaults for p in ref])],
            x_label="pass", y_label="re-faults"))
    else:
        reason = "no ager passes ran" if not passes else null_text(report, "ground_truth.refaults")
        refaults = Plot("refaults", "Re-faults of evicted pages", None, reason)
    return [residency, refaults]


def _path_plots(report: Report) -> list[Plot]:
    """Aging requests per pass by the path KVM took (kernels with kvm:kvm_age_notifier)."""
    rows = [p for p in report.passes if p.notifier_paths is not None]
    if not rows:
        return []
    paths = sorted({k for p in rows for k in p.notifier_paths})
    series = [(path, [p.notifier_paths.get(path, 0) for p in rows]) for path in paths]
    return [Plot("paths", "Aging requests per pass by path (kvm:kvm_age_notifier)", svg.bar_chart(
        [str(p.pass_no) for p in rows], series, x_label="pass", y_label="requests"))]


def _hist_plots(report: Report) -> list[Plot]:
    plots = []
    for i, (name, buckets) in enumerate(report.histograms.items()):
        unit = hist_unit_label(name)
        title = f"Histogram {name} ({unit}, log2 buckets)"
        if not any(b.count for b in buckets):
            plots.append(Plot(f"hist-{i}", title, None, "no samples"))
            continue
        plots.append(Plot(f"hist-{i}", title, svg.bar_chart(
            [svg.compact(b.low) for b in buckets], [("count", [b.count for b in buckets])],
            x_label=f"{unit} (bucket low bound)", y_label="count")))
    if not plots:
        plots.append(Plot("hist-none", "Latency and lock-wait histograms", None,
                          report.probes.not_observable.get("function_latency", "no histograms were recorded")))
    return plots


def _contention_plot(report: Report) -> Plot:
    rows = sorted(report.contention.rows, key=lambda r: -r.total_wait_ns)[:12]
    if not rows:
        reason = (null_text(report, "contention.mmu_lock_wait_ns") if report.contention.mmu_lock_wait_ns is None
                  else "no contended locks were seen")
        return Plot("contention", "Lock contention: total wait by caller", None, reason)
    labels = [f"{r.caller[:26]} ({r.lock_type}{'*' if r.is_mmu_lock else ''}, {r.waiter_class.value})" for r in rows]
    return Plot("contention", "Lock contention: total wait by caller (* = this VM's mmu_lock)", svg.hbar_chart(
        labels, [r.total_wait_ns for r in rows], value_label="total wait", fmt=fmt_ns))


def _heatmap_plots(report: Report) -> list[Plot]:
    plots = []
    slots = {m.slot: m for m in report.memslots if m.slot is not None}
    for hm in report.heatmaps:
        if hm.slot is None:  # a watched VM's range: named by its host address, no guest accesses known
            strips = [(name, row) for name, row in (("aged", hm.aged), ("resident", hm.resident),
                                                    ("referenced", hm.referenced)) if row is not None]
            plots.append(Plot(f"heatmap-{hm.hva_start:x}", f"RAM range at {hm.hva_start:#x}: aged vs resident and "
                              f"referenced pages ({hm.pages:,} pages in {hm.bins} bins)", svg.heat_strips(
                                  strips, start_label=f"hva {hm.hva_start:#x}", end_label="last page")))
            continue
        m = slots.get(hm.slot)
        start = hex(m.gpa_start) if m else "first page"
        end = hex(m.gpa_end) if m else "last page"
        title = (f"Memslot {hm.slot}: how often each guest page was aged vs touched "
                 f"({hm.pages:,} pages in {hm.bins} bins)")
        plots.append(Plot(f"heatmap-{hm.slot}", title, svg.heat_strips(
            [("aged", hm.aged), ("touched", hm.touched)], start_label=f"gpa {start}", end_label=end)))
    if not plots:
        plots.append(Plot("heatmap-none", "Per-memslot heat map", None, "no per-page aging counts were recorded"))
    return plots


def plots(report: Report) -> list[Plot]:
    return [*_aging_plots(report), *_pass_plots(report), *_path_plots(report), *_hist_plots(report),
            _contention_plot(report), *_heatmap_plots(report)]


def _table(rows: list[tuple[str, str, bool]]) -> str:
    """(label, value, value_is_null_reason) rows."""
    out = ["<table>"]
    for label, value, na in rows:
        cls = ' class="na"' if na else ' class="num"'
        out.append(f"<tr><th>{escape(label)}</th><td{cls}>{escape(value)}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _headline(report: Report) -> str:
    rows = []
    for fig in HEADLINE:
        value = get_figure(report, fig.key)
        rows.append((fig.label, fmt_value(value, fig.unit) if value is not None else null_text(report, fig.key),
                     value is None))
    return _table(rows)


def _facts(report: Report) -> str:
    h, f, g = report.host, report.fallback, report.ground_truth

    def opt(key: str, value: object, text: str) -> tuple[str, str, bool]:
        return (key, text if value is not None else null_text(report, key), value is None)

    rows = [
        ("kernel", h.kernel_release or "?", False),
        ("KVM module", h.kvm_module or "?", False),
        opt("host.mmu", h.mmu, h.mmu.value if h.mmu else ""),
        ("TDP MMU", "?" if h.tdp_mmu is None else ("yes" if h.tdp_mmu else "no"), False),
        ("lockless aging", "?" if h.lockless_aging is None else ("yes" if h.lockless_aging else "no"), False),
        ("lockdown", h.lockdown or "?", False),
        ("BCC headers", (h.headers.value if h.headers else "?") + (f" ({h.headers_version})" if h.headers_version
                                                                    else ""), False),
        opt("fallback.verdict", f.verdict, f.verdict.value if f.verdict else ""),
        ("aging paths", f"tdp {fmt_fraction(f.tdp_share)}, rmap {fmt_fraction(f.rmap_share)}", False),
        ("hot / cold pages", f"{fmt_count(g.hot_pages)} / {fmt_count(g.cold_pages)}", False),
        ("lost events", fmt_count(report.lost_events) if report.lost_events is not None
         else null_text(report, "lost_events"), report.lost_events is None),
    ]
    out = _table(rows)
    if f.evidence:
        out += "<p>Fallback evidence:</p><ul>" + "".join(f"<li>{escape(e)}</li>" for e in f.evidence) + "</ul>"
    return out


def _probes(report: Report) -> str:
    rows = [(k, v, False) for k, v in report.probes.chosen.items()]
    rows += [(k, f"not observable here: {v}", True) for k, v in report.probes.not_observable.items()]
    return _table(rows)


def _memslots(report: Report) -> str:
    out = ["<table><tr><th>slot</th><th>gpa</th><th>hva</th><th>size</th><th>backing</th></tr>"]
    for m in report.memslots:
        gpa = "-" if m.gpa_start is None else f"{m.gpa_start:#x}-{m.gpa_end:#x}"
        out.append(
            f"<tr><td>{'-' if m.slot is None else m.slot}</td><td>{gpa}</td><td>{m.hva_start:#x}-{m.hva_end:#x}</td>"
            f"<td>{format_size(m.size)}</td><td>{escape(m.backing)}{' ' + escape(m.path) if m.path else ''}"
            f"{' (' + escape(m.source) + ')' if m.source != 'kvm' else ''}</td></tr>"
        )
    out.append("</table>")
    return "\n".join(out)


def _figure(plot: Plot, prefix: str = "") -> str:
    body = plot.svg if plot.svg else f'<p class="na">{escape(plot.reason)}</p>'
    return (f'<figure class="plot" id="plot-{escape(prefix + plot.plot_id)}" data-expected-marks="{plot.marks}">'
            f"<figcaption>{escape(plot.title)}</figcaption>\n{body}\n</figure>")


def page(title: str, body: list[str]) -> str:
    """A self-contained page around ``body`` (HTML fragments), with the plot check."""
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        *body,
        f"<script>{_JS}</script></body></html>",
    ]) + "\n"


def report_sections(report: Report, prefix: str = "") -> list[str]:
    """Headline, facts and plots of one report (``prefix`` keeps element ids unique on a page of several)."""
    parts = ["<h2>Headline</h2>", _headline(report), "<h2>Host, fallback verdict, ground truth</h2>", _facts(report),
             "<h2>Plots</h2>"]
    return parts + [_figure(p, prefix) for p in plots(report)]


def render_html(report: Report, title: str = "report") -> str:
    status = ("complete" if report.complete else
              f"INCOMPLETE{': ' + report.incomplete_reason if report.incomplete_reason else ''}")
    status_cls = "status-complete" if report.complete else "status-incomplete"
    w = report.trace_window
    window = (f"{w.duration_ns / 1e9:.3f} s traced" if w.duration_ns is not None
              else null_text(report, "trace_window.start_ns"))
    parts = [
        f"<h1>kvmctl {report.report_kind.value} report: {escape(title)}</h1>",
        f'<p><span class="{status_cls}">{escape(status)}</span> &middot; created {escape(report.created)} by kvmctl '
        f"{escape(report.kvmctl_version)} (schema {report.schema_version}) &middot; {escape(window)}</p>",
    ]
    if report.command_line:
        parts.append(f"<p><code>{escape(' '.join(report.command_line))}</code></p>")
    parts += report_sections(report)
    parts += ["<h2>Memslots</h2>", _memslots(report), "<h2>Probes</h2>", _probes(report)]
    if report.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in report.notes) + "</ul>")
    parts.append("<details><summary>Text summary (as <code>kvmctl report show</code>)</summary>"
                 f"<pre>{escape(render_text(report))}</pre></details>")
    return page(f"kvmctl report: {title}", parts)
