"""One watch, end to end: find the VM, trace its ranges, sample each interval, rescan, fill the report.

    open the target (procfs) -> its RAM ranges (QMP, else smaps) and the pieces
    other KVM processes share -> tracer (aging, spte where GPAs are known,
    locks, function probes where the kernel has them) -> every interval: is it
    alive, passive samples, the live row; every RESCAN_S: ranges again ->
    report: trace figures, heat maps with pagemap + kpageflags, VM stats and
    the MMU verdict

Nothing here writes to the target; the tracer and its cleanup are the only
host changes (BPF programs, detached on every exit path).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from kvmctl.errors import Interrupted, KvmctlError, PermissionDeniedError, UnsupportedError, UsageError
from kvmctl.experiment import assembly
from kvmctl.experiment.fallback import FallbackInputs, decide
from kvmctl.experiment.observations import AGING_KINDS, ExperimentTracer
from kvmctl.kvm.memslot import Memslot
from kvmctl.probe import HostCaps, probe_host
from kvmctl.report.schema import HeatMap, PassiveSample, Report, ReportKind, WatchTarget
from kvmctl.trace.catalogue import MEASUREMENTS
from kvmctl.trace.records import TraceResult
from kvmctl.trace.tracer import MAX_RANGES, MAX_SHARED
from kvmctl.watch import signals
from kvmctl.watch.qmp import Qmp
from kvmctl.watch.ranges import Mapping, guest_ram, shared_pieces, sum_kb, with_backing
from kvmctl.watch.target import Process, TargetGone, maps_of, open_target, other_kvm_processes

RESCAN_S = 5.0  # at least this long between two reads of the RAM ranges
# A read of /proc/<pid>/smaps walks the VMM's page tables: ~20 ms of CPU per 512 MiB of resident guest
# memory here, seconds for a big VM. Reads are spaced so that they take at most this share of one CPU.
SMAPS_CPU_SHARE = 0.003
NO_GROUND_TRUTH = "a watched VM: kvmctl does not know which pages its guest touched (no ground truth)"
_GROUND_TRUTH = ("ground_truth.hot_resident_fraction", "ground_truth.evicted_cold_fraction", "ground_truth.refaults",
                 "ground_truth.precision", "ground_truth.recall")
NO_PASSES = "a watched VM: kvmctl runs no aging passes of its own (the host's agers age it continuously)"


@dataclass
class WatchOptions:
    pid: int
    qmp: str | None = None
    duration_s: float | None = None  # None: until interrupted or the process exits
    interval_s: float = 1.0


@dataclass
class LiveRow:
    """One interval, as the live view shows it."""

    t_s: float
    calls: int  # aging calls in the interval
    pages: int
    by_class: dict[str, int]  # calls in the interval per task class
    ambiguous: int  # aging calls in the interval on addresses another KVM process maps too
    sample: PassiveSample
    total_calls: int
    memslots: list[Memslot] = field(default_factory=list)


class Watch:
    def __init__(self, options: WatchOptions, command_line: list[str] | None = None,
                 on_row: Callable[[LiveRow], None] | None = None, progress: Callable[[str], None] | None = None):
        if options.interval_s <= 0:
            raise UsageError("--interval must be positive", "give a duration like 1s")
        self.options = options
        self.on_row = on_row or (lambda row: None)
        self.progress = progress or (lambda msg: None)
        self.report = Report(report_kind=ReportKind.WATCH, command_line=list(command_line or []),
                             spec={"pid": options.pid, "qmp": options.qmp, "duration_s": options.duration_s,
                                   "interval_s": options.interval_s})
        self.caps: HostCaps | None = None
        self.proc: Process | None = None
        self.qmp: Qmp | None = None
        self.tracer: ExperimentTracer | None = None
        self.trace_result: TraceResult | None = None
        self._vm_dir = None
        self._memcg = None
        self._smaps_due = self._next_scan = 0.0
        self._stat0: dict[str, int] = {}
        self._last_calls = self._last_pages = self._last_ambiguous = 0
        self._last_class: dict[str, int] = {}

    def run(self) -> Report:
        """Watch to the end; on any exception the partial report is kept in ``self.report``."""
        try:
            try:
                self._run()
            except TargetGone as err:
                self._target_gone(err)
                raise
            finally:
                self._finish()
            self.report.complete = True  # only once the report is filled too
        except (KvmctlError, Interrupted) as err:
            self.report.incomplete_reason = self.report.incomplete_reason or err.one_line()
            raise
        except BaseException as err:
            self.report.incomplete_reason = self.report.incomplete_reason or f"{type(err).__name__}: {err}"
            raise
        return self.report

    # discovery

    def _run(self) -> None:
        self.caps = caps = probe_host()
        assembly.host_facts(self.report, caps)
        self.proc = proc = open_target(self.options.pid)
        if not caps.bpf_tracepoints:
            need = caps.bpf_tracepoints
            raise UnsupportedError(f"cannot trace here: {need.reason}", need.remedy or "see 'kvmctl info'")
        if self.options.qmp:
            self.qmp = Qmp(self.options.qmp, proc.pid)
        self._memcg = memcg = proc.memcg()
        self._vm_dir = signals.vm_debugfs_dir(caps.kvm.debugfs.value if caps.kvm.debugfs else None, proc.pid,
                                              proc.fds.vm[0])
        memslots, source = self._ranges()
        self.report.target = WatchTarget(proc.pid, proc.comm, proc.command, self._vcpu_tids(), len(proc.fds.vm),
                                         source, memcg.rel if memcg else None, self.options.qmp)
        if len(proc.fds.vm) > 1:
            self.report.notes.append(f"process {proc.pid} holds {len(proc.fds.vm)} KVM VMs: the aging of their "
                                     "memory cannot be told apart by address when their ranges are the same mapping")
        self.report.memslots = memslots
        self._stat0 = signals.memcg_stat(memcg)
        self._start_tracer(memslots)
        self._loop()

    def _read_smaps(self) -> list[Mapping]:
        """The VMM's smaps now; the next read is due once this one's CPU cost fits SMAPS_CPU_SHARE."""
        t0, cpu0 = time.monotonic(), time.process_time()
        maps = self.proc.mappings()
        self._smaps_due = t0 + (time.process_time() - cpu0) / SMAPS_CPU_SHARE
        return maps

    def _ranges(self, maps: list[Mapping] | None = None) -> tuple[list[Memslot], str]:
        maps = self._read_smaps() if maps is None else maps
        if self.qmp is not None:
            slots = with_backing(self.qmp.memslots(), maps)
            if slots:
                return slots[:MAX_RANGES], "qmp"
            self.report.notes.append("QMP named no memory backend mapped in guest-physical space: RAM ranges "
                                     "taken from the process's mappings instead")
        guess = guest_ram(maps, MAX_RANGES)
        if not guess.memslots:
            raise UsageError(f"found no guest RAM in the mappings of process {self.proc.pid}",
                             "give its QMP socket with --qmp, or check that it runs a guest")
        note = ("RAM ranges: the mappings the VMM marked dc (MADV_DONTFORK), as QEMU marks its RAM blocks"
                if guess.marked else f"RAM ranges: no mapping is marked as guest RAM; the {len(guess.memslots)} "
                "largest writable mappings are a guess (give --qmp for QEMU)")
        if guess.dropped:
            note += f"; {guess.dropped} smaller ranges beyond the tracer's {MAX_RANGES} were left out"
        if note not in self.report.notes:
            self.report.notes.append(note)
        return guess.memslots, "smaps"

    def _vcpu_tids(self) -> list[int | None]:
        tids = signals.debugfs_vcpu_tids(self._vm_dir)
        if self.qmp is not None:
            tids.update(self.qmp.vcpu_tids())
        count = max([*self.proc.fds.vcpus, *tids, -1]) + 1
        return [tids.get(i) for i in range(count)]

    def _shared(self, memslots: list[Memslot]) -> list[tuple[int, int]]:
        debugfs = self.caps.kvm.debugfs.value if self.caps.kvm.debugfs else None
        others = [m for pid in other_kvm_processes(self.proc.pid, debugfs) for m in maps_of(pid)]
        return shared_pieces(memslots, others, MAX_SHARED)

    def _start_tracer(self, memslots: list[Memslot]) -> None:
        wanted = {m.name for m in MEASUREMENTS}
        if any(m.gpa_start is None for m in memslots):
            wanted -= {"spte.mappings", "spte.levels", "spte.shadow_pages"}
            for figure in ("spte.mappings", "spte.levels", "spte.shadow_pages"):
                self.report.probes.not_observable[figure] = (
                    "the RAM's guest-physical place is unknown (ranges from the mappings): give --qmp")
        interval_ns = int(self.options.interval_s * 1e9)
        self.tracer = ExperimentTracer(self.caps, self.proc.pid, memslots, set(), interval_ns, wanted,
                                       self._shared(memslots))
        assembly.tracer_started(self.report, self.tracer)
        self.progress(f"watching process {self.proc.pid} ({self.proc.comm}): {len(memslots)} RAM range(s), "
                      f"{self.report.probes.chosen.get('aging.calls', 'aging not traced')}")

    # the loop

    def _loop(self) -> None:
        start = time.monotonic()
        next_tick = start + self.options.interval_s
        self._next_scan = start + RESCAN_S
        end = None if self.options.duration_s is None else start + self.options.duration_s
        while True:
            stop_at = next_tick if end is None else min(next_tick, end)
            time.sleep(max(0.0, stop_at - time.monotonic()))
            if not self.proc.alive():
                raise TargetGone(f"process {self.proc.pid} exited after {time.monotonic() - start:.1f} s of watching",
                                 "the report holds what was measured until then, marked incomplete")
            self._tick()
            if end is not None and time.monotonic() >= end - 1e-3:
                return
            next_tick += self.options.interval_s

    def _sample(self) -> PassiveSample:
        """This interval's passive signals; smaps (Rss, Referenced, and the rescan) only when its read is due."""
        t = self.tracer.tracer.window
        sample = PassiveSample(time.monotonic_ns() - t.start_ns)
        now = time.monotonic()
        if now >= self._smaps_due:
            try:
                maps = self._read_smaps()
            except PermissionDeniedError:
                maps = None  # smaps hidden: the sample says so with nulls
            if maps is not None:
                if now >= self._next_scan:
                    self._rescan(maps)
                    self._next_scan = now + RESCAN_S
                sample.rss_bytes = sum_kb(maps, self.report.memslots, "Rss")
                sample.referenced_bytes = sum_kb(maps, self.report.memslots, "Referenced")
        gauges = signals.debugfs_gauges(self._vm_dir)
        sample.pages_4k, sample.pages_2m = gauges.get("pages_4k"), gauges.get("pages_2m")
        sample.workingset_refault = signals.refaults(signals.memcg_stat(self._memcg))
        return sample

    def _tick(self) -> None:
        sample = self._sample()
        self.report.passive.append(sample)
        counts = self.tracer.tracer.aging_totals()
        if counts is None:
            return
        calls = sum(counts.total(k).calls for k in AGING_KINDS)
        pages = sum(counts.total(k).pages for k in AGING_KINDS)
        by_class = {}
        for row in counts.by_kind_class.values():
            for cls, cc in row.items():
                by_class[cls] = by_class.get(cls, 0) + cc.calls
        ambiguous = sum(counts.ambiguous.get(k.label).calls for k in AGING_KINDS if k.label in counts.ambiguous)
        self.on_row(LiveRow(sample.t_offset_ns / 1e9, calls - self._last_calls, pages - self._last_pages,
                            {k: v - self._last_class.get(k, 0) for k, v in by_class.items()},
                            ambiguous - self._last_ambiguous, sample, calls, list(self.report.memslots)))
        self._last_calls, self._last_pages, self._last_class = calls, pages, by_class
        self._last_ambiguous = ambiguous

    def _rescan(self, maps: list[Mapping]) -> None:
        target = self.report.target
        target.rescans += 1
        memslots, _ = self._ranges(maps)
        shared = self._shared(memslots)
        if memslots != self.report.memslots or shared != self.tracer.target.shared:
            if memslots != self.report.memslots:
                target.range_changes += 1
                t = (time.monotonic_ns() - self.tracer.tracer.window.start_ns) / 1e9
                self.report.notes.append(f"+{t:.1f} s: the RAM ranges changed to " + ", ".join(
                    f"{m.hva_start:#x}+{m.size:#x}" for m in memslots) + "; per-page counts follow the new layout")
            self.tracer.update_ranges(memslots, shared)
            self.report.memslots = memslots
        if (tids := self._vcpu_tids()) != target.vcpu_tids:
            target.vcpu_tids = tids

    # the report

    def _target_gone(self, err: TargetGone) -> None:
        if self.report.target is not None:
            self.report.target.exited_ns = time.monotonic_ns()
        self.report.incomplete_reason = err.one_line()

    def _finish(self) -> None:
        report = self.report
        try:
            if self.tracer is not None:
                self._trace_figures()
            self._host_views()
        finally:
            if self.qmp is not None:
                self.qmp.close()
                self.qmp = None
            for figure in _GROUND_TRUTH:
                report.probes.not_observable.setdefault(figure, NO_GROUND_TRUTH)
            report.probes.not_observable.setdefault("aging.pass_cost.ns_per_page", NO_PASSES)
            assembly.explain_nulls(report)

    def _trace_figures(self) -> None:
        report = self.report
        res = self.trace_result = self.tracer.fill_report(report, None)
        if res.aging is not None:
            amb = [res.aging.ambiguous.get(k.label) for k in AGING_KINDS]
            report.aging.ambiguous_calls = sum(a.calls for a in amb if a)
            report.aging.ambiguous_pages = sum(a.pages for a in amb if a)
            if report.aging.ambiguous_calls:
                report.notes.append(f"{report.aging.ambiguous_calls} aging events fell on addresses another KVM "
                                    "process maps too: counted as ambiguous, in no other figure")
        assembly.mapping_counts(report, res.spte, at_build={}, after_populate={}, after_writeback={})
        report.notes.append("aging classes of a watched VM: vm = its own threads, kswapd/kdamond/other = the "
                            "host (kvmctl ages nothing, so 'ours' stays 0)")

    def _host_views(self) -> None:
        """VM stats, the MMU verdict, memcg deltas and heat maps: what can still be read at the end."""
        report, proc = self.report, self.proc
        if proc is None:
            return
        alive = proc.alive()
        stats: dict = {}
        if self.qmp is not None and alive:
            try:
                stats = self.qmp.vm_stats()
                report.vcpu_stats = self.qmp.vcpu_stats()
            except KvmctlError as err:
                if isinstance(err, Interrupted):
                    raise
                report.notes.append(f"QMP query-stats failed at the end: {err.one_line()}")
        if not stats:
            stats = signals.debugfs_gauges(self._vm_dir)
        report.vm_stats = stats
        if self._stat0 and alive:
            report.memcg_stats = signals.stat_deltas(self._stat0, signals.memcg_stat(self._memcg))
        res = self.trace_result
        paths = (res.paths or {}).get("age") if res is not None else None
        verdict = decide(FallbackInputs(host_mmu=report.host.mmu.value if report.host.mmu else "shadow",
                                        path_calls=dict(paths) if paths and sum(paths.values()) else None,
                                        shadow_pages_created=res.spte.shadow_pages_created if res and res.spte
                                        else None, vm_stats={k: v for k, v in stats.items() if isinstance(v, int)}))
        f = report.fallback
        f.verdict, f.tdp_share, f.rmap_share, f.evidence = (verdict.verdict, verdict.tdp_share, verdict.rmap_share,
                                                            verdict.evidence)
        if verdict.rmap_share is None and verdict.rmap_share_reason:
            report.probes.not_observable["fallback.rmap_share"] = verdict.rmap_share_reason
        if res is not None and res.per_gfn is not None:
            self._heatmaps(res, alive)

    def _heatmaps(self, res: TraceResult, alive: bool) -> None:
        kinds = [res.per_gfn.by_kind.get(k.label) for k in AGING_KINDS]
        aged = sum(k.astype(np.int64) for k in kinds if k is not None)
        kpf = self.caps.memory.kpageflags
        maps, base = [], 0
        for m in self.report.memslots:
            present = referenced = None
            try:
                if alive:
                    present, referenced = signals.page_heat(self.proc.pid, m, kpf.value if kpf else None)
            except OSError as err:
                self.report.notes.append(f"pagemap of {m.hva_start:#x}: {err.strerror}")
            maps.append(HeatMap.from_host_pages(m, aged[base:base + m.pages], present, referenced))
            base += m.pages
        self.report.heatmaps = maps
