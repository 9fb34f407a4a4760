"""One self-contained HTML page per report: tables plus inline-SVG plots.

Nothing is fetched at view time (no CDN, fonts or images), so the file can
be mailed or attached to a bug. A few lines of inline JavaScript check after
load that every plot drew its marks and has a non-empty box, and mark each
``<figure class="plot">`` with ``data-rendered`` ("1", "0" or "empty") and
``data-full-width`` (the plot spans the card), which the browser test reads
back. An empty plot says "none" (or why it could not be measured) in words
instead of drawing an empty frame; time axes carry the ager passes as bands.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html import escape

from kvmctl.report import locks, svg
from kvmctl.report.schema import PassResult, PassRow, Report
from kvmctl.report.figures import HEADLINE, get_figure
from kvmctl.report.fmt import (fmt_count, fmt_fraction, fmt_ns, fmt_ns_short, fmt_seconds, fmt_value, hist_name,
                               hist_unit_label, null_text)
from kvmctl.report.hist import time_buckets
from kvmctl.report.textual import epoch_cells, render_text, spread
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
figcaption{font-weight:600;margin-bottom:4px}figure.plot svg{display:block;width:100%;height:auto}
pre{font-size:12px;overflow-x:auto}th{white-space:nowrap}table.grid th{background:#f4f4f4}
p.legend{font-size:12px;color:#555;margin:2px 0 10px}tr.idle td{color:#8a5a00}tr.failed td{color:#b00}table.grid{font-size:13px}
table.grid td,table.grid th{padding:2px 5px}table.grid th{white-space:normal;vertical-align:bottom}
th.num{text-align:right}tr.note td{font-size:12px;font-style:italic;border-bottom:1px solid #ddd}
td.val{text-align:left}
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
      // drawn across the card: the plot's width against the figure's content box
      var style = getComputedStyle(fig);
      var inner = fig.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
      fig.setAttribute('data-full-width', svgEl && svgEl.getBoundingClientRect().width >= inner - 1 ? '1' : '0');
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


def micro(text: str) -> str:
    """'1.41 us' -> '1.41 µs': the page has the character that plain-text reports avoid."""
    return re.sub(r"(\d) us\b", "\\1 µs", text)


def _seconds(ns: float) -> str:
    return f"{ns:g} s"


def _pct(v: float) -> str:
    return f"{v:g}%"


def _aging_plots(report: Report) -> list[Plot]:
    a = report.aging
    series = a.series
    reason = null_text(report, "aging.calls") if a.calls is None else "none: no aging time series was recorded"
    if not series:
        return [Plot("aging-calls", "Aging calls over time", None, reason),
                Plot("aging-pages", "Pages aged over time", None, reason),
                Plot("aging-background", "Background vs experiment aging", None, reason)]
    per = f" per {fmt_seconds(a.interval_ns / 1e9)}" if a.interval_ns else " per interval"
    titles = (f"Aging calls{per}", f"Guest pages aged{per}", f"Experiment vs background aging calls{per}")
    if not any(s.calls for s in series):
        reason = "none: no aging call touched this VM's memory while traced"
        return [Plot(pid, title, None, reason) for pid, title in zip(("aging-calls", "aging-pages", "aging-background"),
                                                                      titles)]
    half = (a.interval_ns or 0) / 2  # a point stands at the middle of its interval, as the passes' bands do
    xs = [(s.t_offset_ns + half) / 1e9 for s in series]
    bands = pass_bands(report)
    axis = "seconds since probes attached (shaded: ager passes)" if bands else "seconds since probes attached"
    return [
        Plot("aging-calls", titles[0], svg.line_chart(
            [svg.Series("calls", xs, [s.calls for s in series])], x_label=axis,
            y_label="aging calls", x_fmt=_seconds, bands=bands)),
        Plot("aging-pages", titles[1], svg.line_chart(
            [svg.Series("pages", xs, [s.pages for s in series])], x_label=axis,
            y_label="pages aged", x_fmt=_seconds, bands=bands)),
        Plot("aging-background", titles[2], svg.line_chart(
            [svg.Series("experiment", xs, [s.calls - s.background_calls for s in series]),
             svg.Series("background", xs, [s.background_calls for s in series])],
            x_label=axis, y_label="aging calls", x_fmt=_seconds, bands=bands)),
    ]


def pass_bands(report: Report) -> list[svg.Band]:
    """Each pass's window on the time axis of the aging series (seconds since the probes attached)."""
    t0 = report.trace_window.start_ns
    if t0 is None:
        return []
    out = []
    for p in report.passes:
        x0, x1 = (p.start_ns - t0) / 1e9, (p.end_ns - t0) / 1e9
        out.append(svg.Band(x0, x1, f"pass {p.pass_no}", micro(f"pass {p.pass_no} ({p.ager}): {fmt_seconds(x1 - x0)}, "
                                                                f"from {fmt_seconds(x0)} after the probes attached")))
    return out


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
        reason = "none: no ager passes ran" if not passes else null_text(report, "ground_truth.hot_resident_fraction")
        residency = Plot("residency", "Hot and cold page residency after each pass", None, reason)
    ref = [p for p in passes if p.refaults is not None]
    if ref and not any(p.refaults for p in ref):
        refaults = Plot("refaults", "Re-faults of each pass's hot set (pages evicted before it)", None,
                        "none: no evicted page was touched again in any pass")
    elif ref:
        refaults = Plot("refaults", "Re-faults of each pass's hot set (pages evicted before it)", svg.bar_chart(
            [str(p.pass_no) for p in ref], [("re-faults", [p.refaults for p in ref])],
            x_label="pass", y_label="re-faults"))
    else:
        reason = "none: no ager passes ran" if not passes else null_text(report, "ground_truth.refaults")
        refaults = Plot("refaults", "Re-faults of evicted pages", None, reason)
    return [residency, refaults]


def _path_plots(report: Report) -> list[Plot]:
    """Aging requests per pass by the path KVM took (kernels with kvm:kvm_age_notifier)."""
    rows = [p for p in report.passes if p.notifier_paths is not None]
    if not rows:
        return []
    title = "Aging requests per pass by path (kvm:kvm_age_notifier)"
    if not any(p.notifier_paths.values() for p in rows):
        return [Plot("paths", title, None, "none: no aging request reached KVM during a pass")]
    paths = sorted({k for p in rows for k in p.notifier_paths})
    series = [(path, [p.notifier_paths.get(path, 0) for p in rows]) for path in paths]
    return [Plot("paths", title, svg.bar_chart(
        [str(p.pass_no) for p in rows], series, x_label="pass", y_label="requests"))]


def _hist_plots(report: Report) -> list[Plot]:
    plots = []
    for i, (name, buckets) in enumerate(report.histograms.items()):
        what = hist_name(name)
        title = f"{what.title} (log2 buckets)"
        if not any(b.count for b in buckets):
            plots.append(Plot(f"hist-{i}", title, None, "none: no samples"))
            continue
        if what.is_time:  # bucket bounds in ns/µs/ms, the empty buckets between the first and last shown
            shown = time_buckets(buckets)
            labels = [f"{fmt_ns_short(b.low, 'µs')}–{fmt_ns_short(b.high + 1, 'µs')}" for b in shown]
            ticks = [fmt_ns_short(b.low, "µs") for b in shown]
            x_label = f"{what.axis} (bucket: from its low bound to twice that)"
        else:
            shown = buckets
            labels = ticks = [svg.compact(b.low) for b in shown]
            x_label = f"{hist_unit_label(name)} (bucket low bound)"
        plots.append(Plot(f"hist-{i}", title, svg.bar_chart(
            ticks, [("count", [b.count for b in shown])], x_label=x_label, y_label="count", tooltips=labels)))
    if not plots:
        plots.append(Plot("hist-none", "Latency and lock-wait histograms", None,
                          report.probes.not_observable.get("function_latency", "none: no histograms were recorded")))
    return plots


def _contention_plot(report: Report) -> Plot:
    merged = locks.by_caller(report.contention.rows)
    rows = merged[:12]
    if not rows:
        reason = (null_text(report, "contention.mmu_lock_wait_ns") if report.contention.mmu_lock_wait_ns is None
                  else "none: no contended locks were seen")
        return Plot("contention", "Lock contention: total wait by caller", None, reason)
    labels = [f"{_short_caller(r.caller)} ({r.kind}, {'+'.join(r.waiters)})" for r in rows]
    more = f"; {len(merged) - len(rows)} more callers in the text report" if len(merged) > len(rows) else ""
    title = f"Lock contention: total wait by caller ({locks.legend(rows)}; merged per caller and lock type{more})"
    return Plot("contention", title, svg.hbar_chart(
        labels, [r.total_wait_ns for r in rows], value_label="total wait", fmt=lambda v: micro(fmt_ns(v))))


def _short_caller(caller: str, width: int = 34) -> str:
    """The symbol without its offset when too long, then clipped."""
    if len(caller) > width and "+0x" in caller:
        caller = caller.split("+0x", 1)[0]
    return caller if len(caller) <= width else caller[: width - 2] + ".."


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
                 f"({hm.pages:,} pages in {hm.bins} bins; each row's colour scaled to its own maximum)")
        bins = None
        if m:
            edges = [i * hm.pages // hm.bins for i in range(hm.bins + 1)]
            bins = [f"gpa {m.gpa_start + 4096 * lo:#x}-{m.gpa_start + 4096 * hi - 1:#x} ({hi - lo:,} pages)"
                    for lo, hi in zip(edges, edges[1:])]
        plots.append(Plot(f"heatmap-{hm.slot}", title, svg.heat_strips(
            [("aged", hm.aged), ("touched", hm.touched)], start_label=f"gpa {start}", end_label=f"gpa {end}",
            bin_labels=bins)))
    if not plots:
        plots.append(Plot("heatmap-none", "Per-memslot heat map", None, "none: no per-page aging counts were recorded"))
    return plots


def plots(report: Report) -> list[Plot]:
    return [*_aging_plots(report), *_pass_plots(report), *_path_plots(report), *_hist_plots(report),
            _contention_plot(report), *_heatmap_plots(report)]


def _table(rows: list[tuple[str, str, bool]]) -> str:
    """(label, value, value_is_null_reason) rows."""
    out = ["<table>"]
    for label, value, na in rows:
        cls = ' class="na"' if na else ' class="val"'
        out.append(f"<tr><th>{escape(label)}</th><td{cls}>{escape(value if na else micro(value))}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _grid(head: list[str], rows: list[list[str]], text_cols: tuple[int, ...] = (), row_classes: list[str] | None = None,
          caption: str = "", notes: list[str] | None = None) -> str:
    """A table with a header row; every column right-aligned as numbers except ``text_cols``;
    ``notes[r]``, where not empty, is a row of words under row r across the whole table."""
    out = ['<table class="grid">', "<tr>" + "".join(f"<th>{escape(h)}</th>" if i in text_cols else
                                                    f'<th class="num">{escape(h)}</th>' for i, h in enumerate(head))
           + "</tr>"]
    for r, cells in enumerate(rows):
        cls = f' class="{row_classes[r]}"' if row_classes and row_classes[r] else ""
        out.append(f"<tr{cls}>" + "".join(
            f"<td>{escape(c)}</td>" if i in text_cols else f'<td class="num">{escape(micro(c))}</td>'
            for i, c in enumerate(cells)) + "</tr>")
        if notes and notes[r]:
            out.append(f'<tr class="note{" " + row_classes[r] if row_classes and row_classes[r] else ""}">'
                       f'<td></td><td colspan="{len(head) - 1}">{escape(notes[r])}</td></tr>')
    out.append("</table>")
    if caption:
        out.append(f'<p class="legend">{escape(caption)}</p>')
    return "\n".join(out)


def _set_share(x: float | None, pages: int | None) -> str:
    """A resident share of a page set: n/a when the set is empty."""
    return "n/a" if pages == 0 else fmt_fraction(x)


def _pass_notes(report: Report, p: PassRow) -> str:
    """A pass that did nothing or failed, in words, then what the experiment noted about it."""
    prefix = f"pass {p.pass_no}: "
    notes = [n.removeprefix(prefix) for n in report.notes if n.startswith(prefix)]
    if p.result is not PassResult.WORKED:
        notes.insert(0, f"{p.result.value.upper()}: {p.result_reason or 'no reason recorded'}")
    return "; ".join(dict.fromkeys(notes))


_RESULT_CLASS = {PassResult.WORKED: "", PassResult.DID_NOTHING: "idle", PassResult.FAILED: "failed"}


def _passes_table(report: Report) -> str:
    if not report.passes:
        return ""
    rows, classes, notes = [], [], []
    for p in report.passes:
        rows.append([str(p.pass_no), p.ager, p.result.value, fmt_seconds((p.end_ns - p.start_ns) / 1e9),
                     "-" if p.ager_ns is None else fmt_seconds(p.ager_ns / 1e9),
                     _set_share(p.hot_resident_fraction, p.touched_pages),
                     _set_share(p.cold_resident_fraction, p.cold_pages), fmt_count(p.evicted_pages),
                     fmt_count(p.refaults), fmt_count(p.aging_calls), fmt_count(p.ours_calls),
                     fmt_count(p.background_calls), fmt_count(p.aging_pages)])
        notes.append(_pass_notes(report, p))
        classes.append(_RESULT_CLASS[p.result])
    return _grid(["pass", "ager", "result", "window", "ager's pass", "hot resident", "cold resident", "evicted",
                  "re-faults", "aging calls", "our ager", "background", "pages aged"], rows, (1, 2), classes,
                 "Hot: the data pages the guest touched during the pass; cold: the others; both resident after the "
                 "pass (n/a for an empty set). Re-faults: hot pages the guest faulted back in that were evicted "
                 "before the pass. Window: from reading the tracer's counters before the pass to reading them after "
                 "it, the span the row's aging figures were counted in; ager's pass: the ager's own wall time inside "
                 "it. Aging calls: by every task; our ager and background are parts of them (the rest are the VM's "
                 "own threads). - = not measured. Under a row: why a pass did nothing or failed, and what the "
                 "experiment noted about it.", notes)


def _shifts_table(report: Report) -> str:
    """Every move of the hot set and how many passes the host needed to evict what went cold."""
    shifts = report.ground_truth.shifts
    if not shifts:
        return ""
    rows = [[str(s.pass_no), fmt_count(s.moved_pages), fmt_count(s.cooled_pages),
             "not within the run" if s.passes_to_adapt is None else str(s.passes_to_adapt),
             " → ".join(fmt_fraction(x) for x in s.cooled_resident_fraction)] for s in shifts]
    return _grid(["pass", "pages became hot", "pages went cold", "passes to adapt", "went-cold pages resident after "
                  "each pass"], rows, (3, 4),
                 caption="passes to adapt: passes from the move (its own pass counts as 1) until at most 1 % of the "
                         "pages that went cold were still resident.")


def _tasks_table(report: Report) -> str:
    a = report.aging
    if not a.by_task:
        return ""
    ordered = sorted(a.by_task, key=lambda t: (-t.calls, t.pid))
    rows = [[str(t.pid), t.comm, t.task_class.value, fmt_count(t.calls), fmt_count(t.pages),
             fmt_fraction(t.calls / a.calls) if a.calls else "-"] for t in ordered]
    return _grid(["pid", "comm", "class", "aging calls", "pages aged", "share of calls"], rows, (1, 2),
                 caption="class: ours = this experiment's ager; vm = the VM's own threads; kswapd, kdamond and other "
                         "are the host's background aging.")


def _epochs_table(report: Report, head: int = 50) -> str:
    cells = [list(c) for c in epoch_cells(report)]
    if not cells:
        return ""
    if len(cells) > 2 * head:
        cells = cells[:head] + [["...", "", f"{len(cells) - 2 * head} epochs omitted", "", "", ""]] + cells[-head:]
    return _grid(["epoch", "vCPUs", "pattern", "pages touched", "guest s", "wall s"], cells, (2,),
                 caption="pages summed over vCPUs; seconds of the slowest vCPU; all = one row for a run of epochs on "
                         "every vCPU, numbered from its first epoch (xN: N epochs).")


def _repeats_table(report: Report) -> str:
    runs = len(report.repeats)
    if runs < 2:
        return ""
    rows = []
    for fig in HEADLINE:
        value = get_figure(report, fig.key)
        mean, span = spread(fig, [r[fig.key] for r in report.repeats if r.get(fig.key) is not None])
        rows.append([fig.label, fmt_value(value, fig.unit) if value is not None else "-", mean.replace("+-", "±"),
                     span.replace("..", "–")])
    return _grid(["figure", f"run {runs} (this report)", f"mean ± sd ({runs} runs)", "min – max"], rows, (0,),
                 caption=f"run {runs} is the run every other section shows; the spread is over all {runs} runs.")


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
    body = plot.svg if plot.svg else f'<p class="na empty">{escape(plot.reason)}</p>'
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
    parts = ["<h2>Headline</h2>", _headline(report)]
    for title, table in ((f"Repeats: {len(report.repeats)} runs", _repeats_table(report)),
                         ("Ager passes", _passes_table(report)), ("Moves of the hot set", _shifts_table(report)),
                         ("Aging by task", _tasks_table(report))):
        if table:
            parts += [f"<h2>{escape(title)}</h2>", table]
    parts += ["<h2>Host, fallback verdict, ground truth</h2>", _facts(report), "<h2>Plots</h2>"]
    parts += [_figure(p, prefix) for p in plots(report)]
    epochs = _epochs_table(report)
    return parts + (["<h2>Guest epochs</h2>", epochs] if epochs else [])


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
