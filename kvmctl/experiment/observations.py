"""The experiment's view of the tracer: plain trace records -> report fields.

:mod:`kvmctl.trace` turns kernel events into records without deciding what
they mean; this module decides: which calls count as aging, which tasks are
background, which lock waits are mmu_lock, and how per-gfn counts bin into
heat maps.
"""

from __future__ import annotations

import numpy as np

from kvmctl.experiment import hook
from kvmctl.report import schema as rm
from kvmctl.probe import HostCaps
from kvmctl.probe.bpf import find_headers
from kvmctl.trace.catalogue import kernel_offer, make_plan
from kvmctl.trace.records import EventKind, TraceResult, TraceTarget
from kvmctl.vocab import TaskClass
from kvmctl.trace.tracer import Tracer, TracerOptions

# clear_young/clear_flush_young, test_young, and the requests the test_clear_young hook answered
AGING_KINDS = (EventKind.AGE, EventKind.TEST_AGE, EventKind.TEST_CLEAR_YOUNG)
BACKGROUND = (TaskClass.KSWAPD, TaskClass.KDAMOND, TaskClass.OTHER)


class ExperimentTracer:
    """The tracer of one VM, read as the report reads it (an experiment's VM, or a watched one)."""

    def __init__(self, caps: HostCaps, vm_tgid: int, memslots: list[rm.Memslot], ager_tids: set[int],
                 interval_ns: int, wanted: set[str] | None = None, shared: list[tuple[int, int]] | None = None):
        self.plan = make_plan(kernel_offer(caps), wanted)
        self.target = TraceTarget(vm_tgid, list(memslots), set(ager_tids), list(shared or ()))
        self.headers = find_headers(caps.kernel.release)
        self.tracer = Tracer(self.plan, self.target, TracerOptions(bucket_ns=interval_ns), headers=self.headers)
        self.memslots = memslots
        lockless = caps.paging.lockless_aging.value
        self.lockless_aging = lockless if isinstance(lockless, bool) else None
        hook_item = caps.test_clear_young
        self.hook_facts = hook_item.value if hook_item else None
        self.hook_missing = None if hook_item else hook_item.reason
        self.tracer.start()
        self.window_start_ns = self.tracer.window.start_ns

    def _by_task(self, res: TraceResult) -> list[rm.TaskAging]:
        """One row per task (event kinds summed), classed like the BPF side classes them."""
        rows: dict[int, rm.TaskAging] = {}
        for tc in res.aging.by_task:
            if tc.kind not in {k.label for k in AGING_KINDS}:
                continue
            row = rows.get(tc.pid)
            if row is None:
                row = rows[tc.pid] = rm.TaskAging(tc.pid, tc.comm, self._task_class(tc), 0, 0)
            row.calls += tc.calls
            row.pages += tc.pages
        return sorted(rows.values(), key=lambda r: -r.calls)

    def _task_class(self, tc) -> TaskClass:
        if tc.pid in self.target.ager_tids:
            return TaskClass.OURS
        if tc.tgid == self.target.vm_tgid:
            return TaskClass.VM
        if tc.comm.startswith("kswapd"):
            return TaskClass.KSWAPD
        if tc.comm.startswith("kdamond"):
            return TaskClass.KDAMOND
        return TaskClass.OTHER

    @property
    def chosen(self) -> dict[str, str]:
        return dict(self.plan.chosen)

    @property
    def not_observable(self) -> dict[str, str]:
        return dict(self.plan.not_observable)

    def aging_totals(self) -> dict[str, int] | None:
        """Running totals, for per-pass differences."""
        res = self.tracer.running_totals()
        if not res.aging:
            return None
        totals = _totals(res)
        totals["read_ns"] = res.read_ns
        totals["paths"] = dict(res.paths["age"]) if res.paths else None
        totals["notifier"] = res.notifier
        totals["kvm_aging_ns"], totals["kvm_aging_source"] = _kvm_aging_ns(res)
        return totals

    def harvest_take(self) -> np.ndarray | None:
        return self.tracer.harvest_take()

    def pass_lock_figures(self, before: dict, after: dict) -> hook.LockFigures:
        """The lock figures of the requests between two running totals."""
        n0, n1 = before.get("notifier"), after.get("notifier")
        return hook.lock_figures(n1.minus(n0) if n0 is not None and n1 is not None else None,
                                 after["calls"] - before["calls"], self.lockless_aging)

    def stop(self) -> None:
        self.tracer.stop()

    def update_ranges(self, memslots: list[rm.Memslot], shared: list[tuple[int, int]]) -> None:
        """Follow the VM's memory to new ranges (a watched VM's rescan)."""
        self.tracer.update_ranges(memslots, shared)
        self.memslots = list(memslots)

    def fill_report(self, report: rm.Report, touch_counts: np.ndarray | None) -> TraceResult:
        res = self.tracer.collect()
        report.trace_window.start_ns, report.trace_window.end_ns = res.window.start_ns, res.window.end_ns
        report.probes.chosen.update(res.chosen)
        report.probes.not_observable.update(res.not_observable)
        report.notes.extend(n for n in dict.fromkeys(self.tracer.notes + res.notes) if n not in report.notes)
        report.lost_events = res.lost_events
        if res.lost_events:
            report.notes.append("lost events: " + ", ".join(f"{k}={v}" for k, v in res.lost.items() if v))
        partial = {k: v for k, v in res.partial.items() if v}
        if partial:
            report.notes.append("counted in the totals but missing from a per-gfn or per-stack view (not lost): "
                                + ", ".join(f"{k}={v}" for k, v in partial.items()))
        if res.aging:
            t = _totals(res)
            a = report.aging
            a.calls, a.pages = t["calls"], t["pages"]
            a.background_calls, a.background_pages = t["background_calls"], t["background_pages"]
            a.ours_calls, a.ours_pages = t["ours_calls"], t["ours_pages"]
            a.by_task = self._by_task(res)
            for row in a.by_task:
                a.by_class[row.task_class.value] = a.by_class.get(row.task_class.value, 0) + row.calls
            report.notes.append("aging.calls counts kvm:kvm_age_hva and kvm:kvm_test_age_hva on this VM's memslots; "
                                "background = kswapd, kdamond and other tasks (neither our ager nor the VM's own "
                                "threads, whose reclaim is listed under by_task)")
        if res.series is not None:
            s = res.series
            kinds = [k.value for k in AGING_KINDS]
            bg = [c.code for c in BACKGROUND]
            a = report.aging
            a.interval_ns = s.bucket_ns
            calls = s.calls[:, kinds, :]
            pages = s.pages[:, kinds, :]
            for b in range(calls.shape[0]):
                a.series.append(rm.AgingSample(
                    t_offset_ns=b * s.bucket_ns, calls=int(calls[b].sum()), pages=int(pages[b].sum()),
                    background_calls=int(calls[b][:, bg].sum()), background_pages=int(pages[b][:, bg].sum())))
        if res.spte is not None:
            report.aging.bits_cleared = res.spte.bits_cleared
        self._hook_figures(report, res)
        if res.contention is not None:
            rows = []
            for r in sorted(res.contention, key=lambda x: -x.total_ns):
                rows.append(rm.ContentionRow(
                    contended=r.count, total_wait_ns=r.total_ns, max_wait_ns=r.max_ns,
                    avg_wait_ns=int(r.avg_ns), lock_type=r.lock_type, caller=r.caller,
                    waiter_class=r.waiter, is_mmu_lock=r.mmu_lock,
                    lock=f"{r.lock_addr:#x}"))
            report.contention.rows = rows
            mmu = [r for r in res.contention if r.mmu_lock]
            report.contention.mmu_lock_wait_ns = sum(r.total_ns for r in mmu)
            report.contention.mmu_lock_contended = sum(r.count for r in mmu)
        for waiter, buckets in (res.wait_hist or {}).items():
            # named as the BPF side names the class (the vCPUs' histogram is "vm")
            report.histograms[f"lock wait ns ({waiter.name.lower()})"] = list(buckets)
        for f in res.funcs or []:
            report.histograms[f"{f.function} latency ns"] = list(f.hist)
        if res.per_gfn is not None:
            kinds = [res.per_gfn.by_kind.get(k.label) for k in AGING_KINDS]
            per_page = None if kinds[0] is None else sum(k.astype(np.int64) for k in kinds if k is not None)
            report.heatmaps = _heatmaps(self.memslots, per_page, touch_counts)
        return res


    def _hook_figures(self, report: rm.Report, res: TraceResult) -> None:
        """Paths, the lockless share, mmu_lock taken by aging and vCPU waits behind it."""
        locks = hook.lock_figures(res.notifier, _totals(res)["calls"] if res.aging else None, self.lockless_aging)
        report.aging.lockless_share = locks.lockless_share
        report.contention.aging_mmu_lock_acquisitions = locks.acquisitions
        report.probes.derived.update(locks.derived)
        for figure, why in locks.not_observable.items():
            report.probes.not_observable.setdefault(figure, why)
        if res.notifier is not None:
            report.aging.paths = hook.path_rows(res.notifier)
            for op, buckets in res.notifier.latency.items():
                report.histograms[f"aging request latency ns ({op.label})"] = list(buckets)
            facts = self.hook_facts or {}
            report.aging.test_clear_young = hook.hook_figures(res.notifier, facts.get("lru_gen_cap"),
                                                              facts.get("nested_mode"))
        else:
            # the probe's reason (the series is absent) is the one a reader needs, not the attach point's
            report.probes.not_observable[hook.HOOK] = self.hook_missing or self.plan.not_observable.get(
                "aging.test_clear_young", "not traced")
            report.probes.not_observable.setdefault("aging.paths", self.plan.not_observable.get(
                "aging.notifier_paths", "not traced"))
        behind, how = hook.behind_aging_ns(res.contention, res.aging_sections, res.notifier is not None,
                                           self.lockless_aging)
        report.contention.vcpu_wait_behind_aging_ns = behind
        if behind is None:
            report.probes.not_observable.setdefault(hook.BEHIND, self.plan.not_observable.get(
                "contention.behind_aging", "lock contention was not traced"))
        elif not res.aging_sections:
            report.probes.derived[hook.BEHIND] = how


def _kvm_aging_ns(res: TraceResult) -> tuple[int | None, str | None]:
    """Time KVM spent answering aging requests on our memory so far, and how it was measured."""
    if res.notifier is not None and res.notifier.latency:
        return (sum(c.total_ns for c in res.notifier.cells.values()),
                "kvm_age_notifier request latency (each request's start to its end)")
    outer = [f for f in res.funcs or [] if f.role in ("outer_age", "outer_test")]
    if outer:
        return sum(f.total_ns for f in outer), "kvm_age_gfn/kvm_test_age_gfn latency (kprobes)"
    return None, None


def _totals(res: TraceResult) -> dict[str, int]:
    all_ = [res.aging.total(k) for k in AGING_KINDS]
    ours = [res.aging.total(k, (TaskClass.OURS,)) for k in AGING_KINDS]
    bg = [res.aging.total(k, BACKGROUND) for k in AGING_KINDS]
    return {"calls": sum(c.calls for c in all_), "pages": sum(c.pages for c in all_),
            "ours_calls": sum(c.calls for c in ours), "ours_pages": sum(c.pages for c in ours),
            "background_calls": sum(c.calls for c in bg), "background_pages": sum(c.pages for c in bg)}


def _heatmaps(memslots: list[rm.Memslot], aged: np.ndarray | None, touched: np.ndarray | None) -> list[rm.HeatMap]:
    """One heat map per memslot from arrays over all data pages (memslots end to end)."""
    out, base = [], 0
    for m in memslots:
        out.append(rm.HeatMap.from_pages(m, None if aged is None else aged[base:base + m.pages],
                                         None if touched is None else touched[base:base + m.pages]))
        base += m.pages
    return out
