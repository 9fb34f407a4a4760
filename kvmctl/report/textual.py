"""An 80-column text summary of a report, fit to paste into an email.

Histograms follow BCC's ``print_log2_hist`` layout (time histograms with
their bucket bounds in ns/us/ms) and the contention table follows ``perf
lock contention``, so reviewers read them without a legend.
"""

from __future__ import annotations

import json
import statistics
import textwrap
from collections import defaultdict

from kvmctl.report import locks
from kvmctl.report.figures import HEADLINE, Figure, Unit, get_figure
from kvmctl.report.fmt import (fmt_count, fmt_fraction, fmt_ns, fmt_ns_short, fmt_seconds, fmt_value, fmt_whole,
                               hist_name, hist_unit_label, null_text)
from kvmctl.report.hist import log2_hist_lines, time_buckets
from kvmctl.report.schema import ContentionRow, PassResult, Report
from kvmctl.units import format_size

WIDTH = 80
_LIST_HEAD = 6  # long tables show this many rows at each end


# ---------------------------------------------------------------------------
# perf lock contention


def contention_lines(rows: list[ContentionRow], limit: int = 15) -> list[str]:
    """perf's table over the rows merged by caller; the legend only when a row carries the mark."""
    ordered = locks.by_caller(rows)
    kind_w = max([4] + [len(r.kind) for r in ordered[:limit]])
    fmt = f"%9s %10s %10s %10s %{kind_w}s  %s"
    caller_w = WIDTH - 45 - kind_w
    lines = [fmt % ("contended", "total wait", "max wait", "avg wait", "type", "caller"), ""]
    for r in ordered[:limit]:
        lines.append(fmt % (fmt_count(r.contended), fmt_ns(r.total_wait_ns), fmt_ns(r.max_wait_ns),
                            fmt_ns(r.avg_wait_ns), r.kind, _caller(r.caller, caller_w)))
    if len(ordered) > limit:
        lines.append(f"  ... {len(ordered) - limit} more callers (see --json)")
    lines.append(f"  ({locks.legend(ordered)}; rows merged per caller and lock type)")
    return lines


def _caller(caller: str, width: int) -> str:
    """The offset goes before the name is clipped."""
    if len(caller) > width and "+0x" in caller:
        caller = caller.split("+0x", 1)[0]
    return _clip(caller, width)


# ---------------------------------------------------------------------------
# The summary


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 2] + ".."


def _section(title: str) -> list[str]:
    return ["", f"-- {title} ".ljust(WIDTH, "-")]


def _field(label: str, value: str, label_width: int = 11) -> list[str]:
    """'label      value', the value wrapped under itself."""
    indent = " " * (label_width + 1)
    wrapped = textwrap.wrap(value, WIDTH - label_width - 1, break_on_hyphens=False) or [""]
    return [f"{label:<{label_width}} {wrapped[0]}".rstrip()] + [indent + w for w in wrapped[1:]]


def _bullets(items: list[str], prefix: str = "  - ") -> list[str]:
    out = []
    for item in items:
        out += textwrap.wrap(item, WIDTH, initial_indent=prefix, subsequent_indent=" " * len(prefix)) or [prefix]
    return out


def _head(report: Report) -> list[str]:
    h = report.host
    status = "complete" if report.complete else "INCOMPLETE"
    if not report.complete and report.incomplete_reason:
        status += f": {report.incomplete_reason}"
    lines = [f"== kvmctl {report.report_kind.value} report (schema {report.schema_version}) ".ljust(WIDTH, "=")]
    lines += _field("status", status)
    lines += _field("created", f"{report.created} by kvmctl {report.kvmctl_version}")
    if report.command_line:
        lines += _field("command", " ".join(report.command_line))
    host = [f"Linux {h.kernel_release or '?'}"]
    if h.machine:
        host[0] += f" {h.machine}"
    if h.kvm_module:
        host.append(h.kvm_module)
    mmu = h.mmu.value if h.mmu else null_text(report, "host.mmu")
    if h.tdp_mmu is not None:
        mmu += f" (tdp_mmu {'Y' if h.tdp_mmu else 'N'})"
    host.append(f"MMU {mmu}")
    if h.lockless_aging is not None:
        host.append(f"lockless aging {'yes' if h.lockless_aging else 'no'}")
    if h.lockdown is not None:
        host.append(f"lockdown {h.lockdown}")
    lines += _field("host", ", ".join(host))
    if h.headers:
        headers = h.headers.value + (f" ({h.headers_version})" if h.headers_version else "")
        lines += _field("headers", headers)
    w = report.trace_window
    if w.duration_ns is not None:
        lines += _field("traced", f"{fmt_seconds(w.duration_ns / 1e9)}, from probe attach to detach")
    else:
        lines += _field("traced", null_text(report, "trace_window.start_ns"))
    lost = report.lost_events
    lines += _field("lost", null_text(report, "lost_events") if lost is None else f"{lost:,} events")
    return lines


def _headline(report: Report) -> list[str]:
    if len(report.repeats) >= 2:
        return _headline_repeats(report)
    lines = _section("Headline")
    width = max(len(f.label) for f in HEADLINE) + 2
    for fig in HEADLINE:
        value = get_figure(report, fig.key)
        text = fmt_value(value, fig.unit) if value is not None else null_text(report, fig.key)
        lines += _field(fig.label, text, width)
    lines += _bullets(["hot: the pages the guest touched during a pass (the ground truth); cold: the others"], "  ")
    return lines


def spread(fig: Figure, values: list[float]) -> tuple[str, str]:
    """('mean +- sd', 'min .. max') of one figure over the runs; times to three digits to fit."""
    if not values:
        return "-", "-"
    short = {Unit.NS: fmt_ns_short, Unit.COUNT: fmt_whole}
    f = short.get(fig.unit, lambda v: fmt_value(v, fig.unit))
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{f(statistics.fmean(values))} +- {f(sd)}", f"{f(min(values))} .. {f(max(values))}"


def _headline_repeats(report: Report) -> list[str]:
    """The report's run beside the mean, stddev and range of every run, so neither is mistaken for the other."""
    runs = len(report.repeats)
    asked = report.spec.get("repeat")
    of = f"{runs} (of {asked} asked)" if isinstance(asked, int) and asked > runs else str(runs)
    lines = _section(f"Headline: run {runs} of {of}, the run every section below shows")
    rows = []
    for fig in HEADLINE:
        value = get_figure(report, fig.key)
        own = fmt_value(value, fig.unit) if value is not None else None
        rows.append((fig, own, *spread(fig, [r[fig.key] for r in report.repeats if r.get(fig.key) is not None])))
    head = ("figure", f"run {runs}", f"mean +- sd ({runs} runs)", "min .. max")
    widths = [max(len(head[i]), *(len(r[i] or "") for r in rows)) for i in (1, 2, 3)]
    label_w = max(16, min(max(len(f.label) for f in HEADLINE), WIDTH - sum(widths) - 6))
    fmt = f"%-{label_w}s  %{widths[0]}s  %{widths[1]}s  %{widths[2]}s"
    lines.append(fmt % head)
    for fig, own, mean, span in rows:
        label = textwrap.wrap(fig.label, label_w)
        if own is None and mean == "-":  # null in every run: the reason instead of the columns
            lines += _field(label[0], null_text(report, fig.key), label_w + 1)
        else:
            lines.append(fmt % (label[0], own or "-", mean, span))
        lines += label[1:]
    lines.append(f"  (run {runs}: this report's own figure; mean, stddev and range over all {runs} runs)")
    return lines


def _fallback(report: Report) -> list[str]:
    f = report.fallback
    lines = _section("Fallback verdict (which aging path the VM took)")
    lines += _field("verdict", f.verdict.value if f.verdict else null_text(report, "fallback.verdict"))
    if f.tdp_share is not None or f.rmap_share is not None:
        lines += _field("paths", f"tdp {fmt_fraction(f.tdp_share)}, rmap {fmt_fraction(f.rmap_share)} of aging calls")
    if f.evidence:
        lines += ["evidence"] + _bullets(f.evidence)
    return lines


def _ground_truth(report: Report) -> list[str]:
    g = report.ground_truth
    lines = _section("Ground truth (what the guest touched vs what the host decided)")

    def frac(key: str, value: float | None) -> str:
        return fmt_fraction(value) if value is not None else null_text(report, key)

    if g.scored_by:
        lines += _field("scored ager", g.scored_by, 16)
    if g.hot_pages is not None or g.cold_pages is not None:
        lines += _field("pages", f"{fmt_count(g.hot_pages)} hot, {fmt_count(g.cold_pages)} cold", 16)
    lines += _field("hot resident", frac("ground_truth.hot_resident_fraction", g.hot_resident_fraction), 16)
    if g.cold_resident_fraction is not None:
        lines += _field("cold resident", fmt_fraction(g.cold_resident_fraction), 16)
    if g.evicted_pages is not None:
        lines += _field("evicted", f"{fmt_count(g.evicted_pages)} pages", 16)
    lines += _field("evicted cold", frac("ground_truth.evicted_cold_fraction", g.evicted_cold_fraction), 16)
    refaults = (f"{fmt_count(g.refaults)} (evicted pages the guest touched again)" if g.refaults is not None
                else null_text(report, "ground_truth.refaults"))
    lines += _field("re-faults", refaults, 16)
    lines += _field("precision", frac("ground_truth.precision", g.precision), 16)
    lines += _field("recall", frac("ground_truth.recall", g.recall), 16)
    for s in g.shifts:
        trail = " -> ".join(fmt_fraction(x) for x in s.cooled_resident_fraction)
        done = (f"the host needed {s.passes_to_adapt} pass(es) to evict the {fmt_count(s.cooled_pages)} that went cold"
                if s.passes_to_adapt is not None else
                f"the run ended before the host evicted the {fmt_count(s.cooled_pages)} that went cold")
        lines += _field(f"moved, pass {s.pass_no}", f"{fmt_count(s.moved_pages)} pages became hot; {done} "
                                                    f"(resident after each pass: {trail})", 16)
    return lines


def _spte(report: Report) -> list[str]:
    sp = report.spte
    if sp.set_spte is None:
        return []
    lines = _section("Mappings of data pages (kvmmmu tracepoints)")
    lines += _field("set_spte", f"{fmt_count(sp.set_spte)} mappings of {fmt_count(sp.gfns_mapped)} gfns; "
                                f"{fmt_count(sp.remapped)} of them of a gfn mapped before (its SPTE zapped and "
                                "built again)", 16)
    if sp.shadow_pages_created is not None:
        lines += _field("shadow pages", f"{fmt_count(sp.shadow_pages_created)} created", 16)
    after_wb = "" if sp.pages_4k_after_writeback is None else f"{fmt_count(sp.pages_4k_after_writeback)} after " \
                                                               "its writeback, "
    lines += _field("pages_4k", f"{fmt_count(sp.pages_4k_at_build)} built, {fmt_count(sp.pages_4k_after_populate)} "
                                f"populated, {after_wb}{fmt_count(sp.pages_4k_at_end)} at end", 16)
    words = writeback_words(report)
    if words:
        lines += _field("writeback", words, 16)
    return lines


def writeback_words(report: Report) -> str | None:
    """What the populate's writeback did to the SPTEs, where the pages_4k gauge shows it."""
    sp = report.spte
    if sp.pages_4k_after_populate is None or sp.pages_4k_after_writeback is None:
        return None
    dropped = sp.pages_4k_after_populate - sp.pages_4k_after_writeback
    if dropped <= 0:
        return None
    return (f"writing the populated file pages back write-protects them and KVM drops their SPTEs: "
            f"{sp.pages_4k_after_populate:,} were present after the populate, {sp.pages_4k_after_writeback:,} after "
            "its fsync, before the first pass. A page the guest did not touch again (the cold ones) had no SPTE "
            "when aging began, so aging had no accessed bit of it to test")


def _elided(rows: list, fmt: str, cells, what: str, head: int = _LIST_HEAD) -> list[str]:
    """A table's rows, ``fmt % cells(row)`` each; past 2 * head rows the middle is one "omitted" line."""
    if len(rows) <= 2 * head:
        return [fmt % cells(r) for r in rows]
    return ([fmt % cells(r) for r in rows[:head]] + [f"  ... {len(rows) - 2 * head} {what} omitted"]
            + [fmt % cells(r) for r in rows[-head:]])


def _set_fraction(x: float | None, pages: int | None) -> str:
    """A resident share of a page set: n/a when the set is empty."""
    return "n/a" if pages == 0 else fmt_fraction(x).replace("%", "")


def _passes(report: Report) -> list[str]:
    if not report.passes:
        return []
    fmt = "%4s %-7s %7s %6s %6s %8s %8s %8s %9s %8s"
    lines = _section("Ager passes")
    lines.append(fmt % ("pass", "ager", "ms", "hot%", "cold%", "evicted", "refaults", "calls", "ours", "bg calls"))

    def row(p) -> str:
        line = fmt % (p.pass_no, _clip(p.ager, 7), f"{(p.end_ns - p.start_ns) / 1e6:.1f}",
                      _set_fraction(p.hot_resident_fraction, p.touched_pages),
                      _set_fraction(p.cold_resident_fraction, p.cold_pages), fmt_count(p.evicted_pages),
                      fmt_count(p.refaults), fmt_count(p.aging_calls), fmt_count(p.ours_calls),
                      fmt_count(p.background_calls))
        if p.result is PassResult.WORKED:
            return line
        return "\n".join([line] + _bullets([f"{p.result.value.upper()}: {p.result_reason or ''}"], "       "))

    lines += "\n".join(_elided(report.passes, "%s", lambda p: (row(p),), "passes")).splitlines()
    lines.append("  (hot: pages the guest touched during the pass; cold: the others; hot%/cold%:")
    lines.append("   resident after the pass, n/a for an empty set; refaults: hot pages the guest")
    lines.append("   faulted back in, evicted before the pass; ms: the window calls were counted")
    lines.append("   in, the pass inside it; ours: by our ager; - = not measured)")
    return lines


def _harvest(report: Report) -> list[str]:
    """The harvest score and the pass cost, where measured."""
    h, c = report.aging.harvest, report.aging.pass_cost
    if h.passes is None and c.seconds is None:
        return []
    lines = _section("Accessed-bit harvest and the cost of a pass")
    if h.passes is not None:
        lines += _field("harvest", f"{fmt_count(h.agreed)} agree of {fmt_count(h.expected_young)} expected young "
                                   f"and {fmt_count(h.observed_young)} cleared over {h.passes} passes: precision "
                                   f"{fmt_fraction(h.precision)}, recall {fmt_fraction(h.recall)}")
        lines += _bullets([f"gfn {d.gfn:#x} pass {d.pass_no}: expected {'young' if d.expected else 'old'}, "
                           f"{'cleared' if d.observed else 'not cleared'} ({d.history})"
                           for d in h.disagreements[:5]])
        if len(h.disagreements) > 5:
            lines.append(f"  ... {len(h.disagreements) - 5} more in the JSON")
    if c.seconds is not None:
        cpu = f"; ager CPU {c.cpu_seconds:.3f} s ({c.cpu_seconds_per_gib:.3f} s/GiB)" if c.cpu_seconds is not None \
            else ""
        lines += _field("pass cost", f"{c.seconds:.3f} s per pass, {c.seconds_per_gib:.3f} s/GiB, "
                                     f"{fmt_ns(c.ns_per_page)} per page{cpu}")
        lines += _field("measured", c.source or "-")
    return lines


def _aging_paths(report: Report) -> list[str]:
    """How KVM answered the aging requests (kernels with kvm:kvm_age_notifier)."""
    a, hook = report.aging, report.aging.test_clear_young
    if not a.paths:
        return []
    lines = _section("Aging requests by path (kvm:kvm_age_notifier)")
    fmt = "%-17s %-14s %9s %10s %9s %10s"
    lines.append(fmt % ("op", "path", "calls", "pages", "cleared", "avg lat"))
    for r in a.paths:
        lines.append(fmt % (r.op, r.path, fmt_count(r.calls), fmt_count(r.pages), fmt_count(r.cleared),
                            fmt_ns(r.avg_ns)))
    if hook.calls is not None:
        lines += _field("hook", f"{fmt_count(hook.calls)} requests, {fmt_count(hook.pages_per_call)} pages each, "
                                f"{fmt_count(hook.cleared)} bits cleared; refused {fmt_count(hook.refused_nested)} "
                                f"(nested) + {fmt_count(hook.refused_mmu)} (mmu)")
        lines += _field("switches", f"lru_gen cap 0x0008 {hook.lru_gen_cap or '-'}, "
                                    f"kvm.test_clear_young_nested {hook.nested_mode or '-'}")
    rows = [p for p in report.passes if p.notifier_paths is not None]
    if rows:
        pfmt = "%4s %9s %9s %9s %9s  %s"
        lines.append("")
        lines.append(pfmt % ("pass", "lockless", "mmu_lock", "cleared", "touched", "requests by path"))
        lines += _elided(rows, pfmt, lambda p: (
            p.pass_no, fmt_fraction(p.lockless_share), fmt_count(p.mmu_lock_acquisitions), fmt_count(p.hook_cleared),
            fmt_count(p.touched_pages),
            _clip(", ".join(f"{k} {fmt_count(v)}" for k, v in sorted(p.notifier_paths.items())), WIDTH - 46)),
            "passes")
        lines.append("  (cleared: accessed bits cleared through the hook during the pass; touched: pages")
        lines.append("   the guest touched since the previous pass, the ground truth)")
    return lines


def epoch_cells(report: Report) -> list[tuple[str, ...]]:
    """(epoch, vcpus, pattern, pages touched, guest s, wall s) per epoch, the vCPUs' rows merged."""
    by_epoch: dict[int, list] = defaultdict(list)
    for row in report.epochs:
        by_epoch[row.epoch].append(row)
    out = []
    for e in sorted(by_epoch):
        rows = by_epoch[e]
        out.append((str(e), "all" if any(r.vcpu < 0 for r in rows) else str(len(rows)),
                    ",".join(sorted({r.pattern for r in rows})), fmt_count(sum(r.pages_touched for r in rows)),
                    f"{max(r.guest_seconds for r in rows):.3f}", f"{max(r.wall_seconds for r in rows):.3f}"))
    return out


def _epochs(report: Report) -> list[str]:
    if not report.epochs:
        return []
    fmt = "%5s %5s %-22s %14s %10s %10s"
    lines = _section("Guest epochs")
    lines.append(fmt % ("epoch", "vcpus", "pattern", "pages touched", "guest s", "wall s"))
    lines += _elided(epoch_cells(report), fmt, lambda c: (*c[:2], _clip(c[2], 22), *c[3:]), "epochs")
    lines.append("  (pages summed over vCPUs; seconds of the slowest vCPU; all = one row for a")
    lines.append("   concurrent pass: its epoch run xN times over on every vCPU)")
    return lines


def _aging(report: Report) -> list[str]:
    a = report.aging
    if not a.by_task and not a.series:
        return []
    lines = _section("Aging by task")
    if a.by_task:
        fmt = "%8s %-16s %-8s %12s %14s"
        lines.append(fmt % ("pid", "comm", "class", "calls", "pages"))
        ordered = sorted(a.by_task, key=lambda t: (-t.calls, t.pid))
        for t in ordered[:10]:
            lines.append(fmt % (t.pid, _clip(t.comm, 16), t.task_class.value, fmt_count(t.calls), fmt_count(t.pages)))
        if len(ordered) > 10:
            lines.append(f"  ... {len(ordered) - 10} more tasks")
    if a.series and a.interval_ns:
        peak = max(a.series, key=lambda s: s.calls)
        lines += _field(
            "series",
            f"{len(a.series)} samples of {fmt_seconds(a.interval_ns / 1e9)}; peak {fmt_count(peak.calls)} calls "
            f"({fmt_count(peak.pages)} pages) {fmt_seconds(peak.t_offset_ns / 1e9)} after the probes attached",
        )
    return lines


def _histograms(report: Report) -> list[str]:
    lines: list[str] = []
    for name, buckets in report.histograms.items():
        what = hist_name(name)
        lines += _section(_clip(what.title, WIDTH - 5))
        if what.is_time:
            lines += log2_hist_lines(time_buckets(buckets), what.axis, fmt_ns_short)
        else:
            lines += log2_hist_lines(buckets, hist_unit_label(name))
    return lines


def _contention(report: Report) -> list[str]:
    c = report.contention
    lines = _section("Lock contention (perf lock contention style)")
    wait = c.mmu_lock_wait_ns
    text = fmt_ns(wait) if wait is not None else null_text(report, "contention.mmu_lock_wait_ns")
    if wait is not None and c.mmu_lock_contended == 0:
        text = "never contended while traced"
    elif wait is not None and c.mmu_lock_contended is not None:
        text += f" in {fmt_count(c.mmu_lock_contended)} contended acquisitions"
    lines += _field("mmu_lock", text)
    per_class: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in c.rows:
        if r.is_mmu_lock:
            per_class[r.waiter_class.value][0] += r.contended
            per_class[r.waiter_class.value][1] += r.total_wait_ns
    if per_class:
        parts = [f"{k} {fmt_ns(v[1])} ({fmt_count(v[0])})" for k, v in sorted(per_class.items())]
        lines += _field("waiters", "; ".join(parts))
    if c.rows:
        lines.append("")
        lines += contention_lines(c.rows)
    return lines


def _memslots(report: Report) -> list[str]:
    if not report.memslots:
        return _section("Memslots") + ["  none recorded"]
    fmt = "%4s  %-18s  %-18s  %7s  %s"
    lines = _section("Memslots")
    lines.append(fmt % ("slot", "gpa", "hva", "size", "backing"))
    for m in report.memslots:
        backing = m.backing + (f" ({m.source})" if m.source != "kvm" else "") + (f" {m.path}" if m.path else "")
        lines.append(fmt % ("-" if m.slot is None else m.slot, "-" if m.gpa_start is None else hex(m.gpa_start),
                            hex(m.hva_start), format_size(m.size), _clip(backing, WIDTH - 55)))
    return lines


def _target(report: Report) -> list[str]:
    """The watched process and its ambiguous events (watch reports)."""
    t = report.target
    if t is None:
        return []
    lines = _section("Watched process")
    lines += _field("pid", f"{t.pid} ({t.comm}), {t.vm_fds} VM(s), RAM ranges from {t.ram_source}"
                           + (", exited during the watch" if t.exited_ns is not None else ""))
    lines += _field("command", " ".join(t.command))
    lines += _field("vCPU tids", ", ".join(f"{i}:{'-' if tid is None else tid}" for i, tid in enumerate(t.vcpu_tids))
                    or "none seen")
    lines += _field("memcg", t.memcg or "-")
    lines += _field("rescans", f"{t.rescans} ({t.range_changes} found other ranges)")
    a = report.aging
    if a.by_class:
        lines += _field("by class", ", ".join(f"{k} {fmt_count(v)}" for k, v in sorted(a.by_class.items())))
    if a.ambiguous_calls is not None:
        lines += _field("ambiguous", f"{fmt_count(a.ambiguous_calls)} events ({fmt_count(a.ambiguous_pages)} pages) on "
                                     "addresses another KVM process maps too")
    if report.passive:
        last = report.passive[-1]
        # smaps is read only every few intervals (each read walks the page tables): its latest reading
        smaps = next((p for p in reversed(report.passive) if p.rss_bytes is not None), None)
        mib = (lambda n: "-" if n is None else f"{n / (1 << 20):,.1f} MiB")
        if smaps is not None:
            lines += _field("smaps", f"Rss {mib(smaps.rss_bytes)}, Referenced {mib(smaps.referenced_bytes)} of the "
                                     f"RAM ranges at +{smaps.t_offset_ns / 1e9:.1f} s")
        lines += _field("at the end", f"pages_4k {fmt_count(last.pages_4k)}, workingset_refault "
                                      f"{fmt_count(last.workingset_refault)}")
    if report.memcg_stats:
        shown = [f"{k} {v:+,}" for k, v in report.memcg_stats.items() if "refault" in k or "pgscan" in k
                 or "pgsteal" in k]
        if shown:
            lines += _field("memcg", "; ".join(shown))
    return lines


def _probes(report: Report) -> list[str]:
    p = report.probes
    lines = _section("Probes")
    width = max((len(k) for k in p.chosen), default=10) + 1
    for measurement, point in p.chosen.items():
        lines += _field(measurement, point, min(width, 30))
    if p.derived:
        lines.append("derived, not counted per event:")
        by_how: dict[str, list[str]] = defaultdict(list)
        for figure, how in p.derived.items():
            by_how[how].append(figure)
        lines += _bullets([f"{', '.join(figures)}: {how}" for how, figures in by_how.items()])
    if p.not_observable:
        lines.append("not observable here:")
        lines += _bullets([f"{k}: {v}" for k, v in p.not_observable.items()])
    return lines


def _spec(report: Report) -> list[str]:
    if not report.spec:
        return []
    lines = _section(f"{report.report_kind.value.capitalize()} spec")
    for key, value in report.spec.items():
        lines += _field(str(key), value if isinstance(value, str) else json.dumps(value), 16)
    return lines


def _stats_cells(title: str, stats: dict[str, int | list[int]]) -> list[str]:
    if not stats:
        return []
    lines = _section(title)
    cells = []
    for name, value in stats.items():
        shown = fmt_count(value) if isinstance(value, int) else f"[{len(value)} buckets, sum {fmt_count(sum(value))}]"
        cells.append(f"{_clip(name, 26):<26} {shown:>11}")
    for i in range(0, len(cells), 2):
        lines.append("  ".join(cells[i : i + 2]))
    return lines


def _vm_stats(report: Report) -> list[str]:
    return _stats_cells("VM stats", report.vm_stats) + _stats_cells("vCPU stats (summed over vCPUs)",
                                                                    report.vcpu_stats)


def _fault(report: Report) -> list[str]:
    if report.guest_fault is None:
        return []
    lines = _section("Guest fault")
    lines += _field("fault", report.guest_fault.message)
    regs = [f"{k}={v:#x}" for k, v in report.guest_fault.registers.items()]
    lines += _bullets([" ".join(regs)], prefix="  ") if regs else []
    return lines


def _notes(report: Report) -> list[str]:
    if not report.notes:
        return []
    return _section("Notes") + _bullets(report.notes)


def render_text(report: Report) -> str:
    lines: list[str] = []
    for part in (
        _head,
        _target,
        _headline,
        _fallback,
        _ground_truth,
        _spte,
        _passes,
        _harvest,
        _aging_paths,
        _aging,
        _histograms,
        _contention,
        _epochs,
        _memslots,
        _probes,
        _spec,
        _vm_stats,
        _fault,
        _notes,
    ):
        lines += part(report)
    return "\n".join(line.rstrip() for line in lines) + "\n"
