"""The experiment report's schema: one versioned dataclass tree.

The experiment fills a :class:`Report`; every renderer (text, HTML, diff,
Chrome trace) reads only this tree. Figures a host cannot observe stay
``None`` and carry a reason in ``probes.not_observable`` keyed by the figure's
dotted name (``"aging.bits_cleared"``), so no renderer ever shows a made-up 0.
``docs/report-schema.md`` documents every field; a new field goes here and
there (a test checks that every field is documented).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from kvmctl import __version__
from kvmctl.kvm.memslot import Memslot
from kvmctl.report.figures import REQUIRED_FIGURES, get_figure, set_figure
from kvmctl.report.serialize import dump, load
from kvmctl.vocab import Bucket, TaskClass, TraceWindow, WaiterClass

SCHEMA_VERSION = 1
KIND = "kvmctl-report"
HEATMAP_BINS = 64  # fixed so that heat maps of two reports line up bin by bin


class ReportKind(str, enum.Enum):
    """What produced the report."""

    EXPERIMENT = "experiment"  # kvmctl built the VM and drove its guest: the ground truth is known
    WATCH = "watch"  # a VM kvmctl did not create, watched from outside: no ground truth


class Mmu(str, enum.Enum):
    TDP = "tdp"  # EPT/NPT with the TDP MMU
    SHADOW = "shadow"  # shadow paging (PVM, or no TDP MMU)


class Verdict(str, enum.Enum):
    """Which aging path the experiment VM's aging calls took."""

    TDP = "tdp"
    RMAP_SHADOW = "rmap (no TDP MMU: shadow paging)"
    RMAP_NESTED = "rmap (nested)"
    # the test_clear_young series refused its lockless path for the whole VM (kvm.test_clear_young_nested=v1)
    RMAP_NESTED_HOOK_DISABLED = "rmap (nested): test_clear_young disabled: this VM has run a nested guest"


class PassResult(str, enum.Enum):
    """What a pass amounted to, in words for the pass table."""

    WORKED = "worked"
    DID_NOTHING = "did nothing"  # the ager had nothing to do, or made no aging call and evicted nothing
    FAILED = "failed"  # a step of the ager failed; the report is then incomplete


class Headers(str, enum.Enum):
    """Which kernel headers BCC compiled the probes against."""

    EXACT = "exact"
    MISMATCHED = "mismatched"
    NONE = "none"  # BCC not used (nothing traced)


def _key(name: str) -> dict:
    """Field metadata: the JSON key differs from the Python name (keywords)."""
    return {"key": name}


@dataclass
class HostFacts:
    kernel_release: str | None = None
    machine: str | None = None
    kvm_module: str | None = None  # kvm_intel, kvm_amd, kvm_pvm
    mmu: Mmu | None = None
    tdp_mmu: bool | None = None
    lockless_aging: bool | None = None  # CONFIG_KVM_MMU_LOCKLESS_AGING
    headers: Headers | None = None
    headers_version: str | None = None  # e.g. "6.1.0-28-amd64" when mismatched
    cpus: int | None = None
    memory_bytes: int | None = None
    # the test_clear_young series (kernels/test-clear-young): symbol, tracepoint, lru_gen cap, nested mode
    test_clear_young: dict[str, Any] | None = None
    lockdown: str | None = None  # none / integrity / confidentiality, as `kvmctl info` shows it


@dataclass
class Probes:
    chosen: dict[str, str] = field(default_factory=dict)  # measurement -> attach point
    not_observable: dict[str, str] = field(default_factory=dict)  # figure/measurement -> reason
    derived: dict[str, str] = field(default_factory=dict)  # figure -> how it follows from what was traced


@dataclass
class TaskAging:
    pid: int
    comm: str
    task_class: TaskClass = field(metadata=_key("class"))
    calls: int
    pages: int


@dataclass
class AgingSample:
    t_offset_ns: int  # interval start, from trace_window.start_ns
    calls: int
    pages: int
    background_calls: int
    background_pages: int


@dataclass
class NotifierPathRow:
    """Aging requests of one (op, path) on our memslots (kvm:kvm_age_notifier)."""

    op: str  # test_clear_young, clear_flush_young, clear_young, test_young
    path: str  # lockless, lockless+rmap, refused:nested, refused:mmu, locked
    calls: int
    pages: int  # pages asked about, inside our memslots
    young: int  # accessed pages found
    cleared: int  # of those, cleared (requests that asked to clear)
    avg_ns: int | None = None  # mean latency, start to kvm_age_notifier, where starts were traced
    max_ns: int | None = None


@dataclass
class ClearYoungHook:
    """The lockless test_clear_young hook: the requests it answered and what it found."""

    calls: int | None = None  # requests answered by the hook (lockless or lockless+rmap)
    pages: int | None = None
    pages_per_call: float | None = None
    young: int | None = None  # accessed pages found
    cleared: int | None = None  # accessed bits cleared through the hook
    refused_nested: int | None = None  # requests refused: the VM has shadow roots (a nested guest ran)
    refused_mmu: int | None = None  # requests refused: no TDP MMU or no accessed bits
    lru_gen_cap: str | None = None  # "on"/"off": MGLRU's cap 0x0008 while the passes ran
    nested_mode: str | None = None  # kvm.test_clear_young_nested: "v1" or "fixed"


@dataclass
class HarvestDisagreement:
    """One gfn where what aging cleared and what the guest touched disagree, with its history."""

    gfn: int
    pass_no: int = field(metadata=_key("pass"))
    expected: bool  # expected young: aged while mapped, touched since its previous harvest
    observed: bool  # its accessed bit was cleared
    history: str  # per pass: touched, mapped, unmapped, aged (+mapped), cleared


@dataclass
class Harvest:
    """KVM's accessed-bit harvest scored against the guest, over the gfns aging visited while mapped."""

    expected_young: int | None = None
    observed_young: int | None = None
    agreed: int | None = None
    precision: float | None = None
    recall: float | None = None
    passes: int | None = None  # passes scored
    disagreements: list[HarvestDisagreement] = field(default_factory=list)  # the first 20


@dataclass
class PassCost:
    """What one aging pass over the guest costs."""

    source: str | None = None  # what `seconds` measures
    seconds: float | None = None  # mean per pass
    seconds_per_gib: float | None = None
    ns_per_page: float | None = None
    cpu_seconds: float | None = None  # CPU time of the ager's thread per pass (the pass's own reclaim included)
    cpu_seconds_per_gib: float | None = None


@dataclass
class Aging:
    calls: int | None = None  # all aging calls on our VM's memslots (ours + the VM's own + background)
    pages: int | None = None  # guest pages those calls covered
    ours_calls: int | None = None  # calls made by our own ager's threads
    ours_pages: int | None = None
    background_calls: int | None = None  # calls by kswapd, kdamond and other tasks (neither ours nor the VM's)
    background_pages: int | None = None
    bits_cleared: int | None = None  # accessed bits actually cleared (TDP MMU only)
    interval_ns: int | None = None  # width of one series sample
    by_task: list[TaskAging] = field(default_factory=list)
    series: list[AgingSample] = field(default_factory=list)
    lockless_share: float | None = None  # share of aging calls that took no mmu_lock for the TDP MMU
    paths: list[NotifierPathRow] = field(default_factory=list)
    test_clear_young: ClearYoungHook = field(default_factory=ClearYoungHook)
    harvest: Harvest = field(default_factory=Harvest)
    pass_cost: PassCost = field(default_factory=PassCost)
    by_class: dict[str, int] = field(default_factory=dict)  # task class -> calls (the by_task rows summed)
    # events on addresses another KVM process maps too (a watched VM): perhaps not this VM's, in no other figure
    ambiguous_calls: int | None = None
    ambiguous_pages: int | None = None


@dataclass
class ContentionRow:
    """One ``perf lock contention`` row: a (caller, lock, waiter) key."""

    contended: int
    total_wait_ns: int
    max_wait_ns: int
    avg_wait_ns: int
    lock_type: str  # spinlock, rwlock:W, rwsem:R, mutex, ...
    caller: str  # first non-lock frame, symbol+offset
    waiter_class: WaiterClass
    is_mmu_lock: bool
    lock: str | None = None  # lock address or symbol when known


@dataclass
class Contention:
    mmu_lock_wait_ns: int | None = None  # total wait on our VM's mmu_lock
    mmu_lock_contended: int | None = None
    rows: list[ContentionRow] = field(default_factory=list)
    aging_mmu_lock_acquisitions: int | None = None  # aging requests on our VM that took mmu_lock for write
    vcpu_wait_behind_aging_ns: int | None = None  # vCPU mmu_lock waits while a locked aging request ran


@dataclass
class Shift:
    """The hot set moved at a pass: how many passes the host needed to evict the pages that went cold."""

    pass_no: int = field(metadata=_key("pass"))
    moved_pages: int
    cooled_pages: int
    passes_to_adapt: int | None  # passes (the shift's own counts as 1) until <= 1 % of them were resident
    cooled_resident_fraction: list[float] = field(default_factory=list)  # after each pass from the shift on


@dataclass
class GroundTruth:
    hot_pages: int | None = None
    cold_pages: int | None = None
    hot_resident_fraction: float | None = None  # after the last pass
    cold_resident_fraction: float | None = None
    evicted_pages: int | None = None
    evicted_cold_fraction: float | None = None
    refaults: int | None = None  # evicted pages the guest touched again: every pass's plus the final phase's
    precision: float | None = None  # young/idle verdicts vs the touched set
    recall: float | None = None
    scored_by: str | None = None  # the ager whose decisions were scored
    shifts: list[Shift] = field(default_factory=list)  # every move of the hot set between passes
    passes_to_adapt: int | None = None  # the most passes any followed-through move needed
    final_refaults: int | None = None  # of refaults, those in the final touch phase (what the last pass evicted)


@dataclass
class Spte:
    """Mappings of the VM's data pages (kvmmmu tracepoints) beside the pages_4k gauge."""

    set_spte: int | None = None  # kvm_mmu_set_spte events on data gfns in the trace window
    remapped: int | None = None  # of those, mappings of a gfn mapped before (after a zap); not re-faults
    gfns_mapped: int | None = None  # distinct data gfns mapped at least once
    shadow_pages_created: int | None = None  # kvm_mmu_get_page events that created a shadow page
    pages_4k_at_build: int | None = None  # VM stat pages_4k after the VM was built (system pages)
    pages_4k_after_populate: int | None = None  # ... after the populate epoch (system + every data page)
    pages_4k_after_writeback: int | None = None  # ... after the populate's fsync (writeback zaps SPTEs)
    pages_4k_at_end: int | None = None  # ... at the end of the run


@dataclass
class Fallback:
    verdict: Verdict | None = None
    tdp_share: float | None = None  # share of aging calls on the TDP path
    rmap_share: float | None = None
    evidence: list[str] = field(default_factory=list)


@dataclass
class EpochRow:
    epoch: int
    vcpu: int
    pattern: str
    pages_touched: int
    guest_seconds: float
    wall_seconds: float
    start_ns: int | None = None  # CLOCK_MONOTONIC, for the timeline export
    end_ns: int | None = None


@dataclass
class PassRow:
    pass_no: int = field(metadata=_key("pass"))
    ager: str
    start_ns: int  # CLOCK_MONOTONIC; the window the aging figures were counted in, the pass inside it
    end_ns: int
    hot_resident_fraction: float | None = None  # of the pass's hot set (touched during its phase); None: empty set
    cold_resident_fraction: float | None = None
    evicted_pages: int | None = None
    refaults: int | None = None  # re-faults of this pass's hot set: pages evicted before its phase, touched in it
    aging_calls: int | None = None  # during the window, by anyone
    aging_pages: int | None = None
    background_calls: int | None = None
    aging_paths: dict[str, int] | None = None  # kvm_age_gfn calls per path during the pass (function probes)
    notifier_paths: dict[str, int] | None = None  # aging requests per kvm_age_notifier path during the pass
    lockless_share: float | None = None
    hook_cleared: int | None = None  # accessed bits cleared through test_clear_young during the pass
    touched_pages: int | None = None  # the pass's hot set: distinct data pages the guest touched in its epochs
    harvest_precision: float | None = None  # accessed bits cleared vs expected young, this pass
    harvest_recall: float | None = None
    kvm_aging_ns: int | None = None  # time KVM spent answering this VM's aging requests during the pass
    cpu_ns: int | None = None  # CPU time of the ager's thread during the pass
    mmu_lock_acquisitions: int | None = None  # aging requests that took mmu_lock during the pass
    ager_ns: int | None = None  # wall time of the ager's own pass, inside start_ns..end_ns
    settle_ns: int | None = None  # mode concurrent: how long the guest ran its epoch before the pass began
    result: PassResult = PassResult.WORKED
    result_reason: str | None = None  # why a pass did nothing or failed, in words
    ours_calls: int | None = None  # aging calls our ager made in the window
    cold_pages: int | None = None  # data pages the guest did not touch during the pass's epochs
    evicted_hot_pages: int | None = None
    evicted_cold_pages: int | None = None
    moved_pages: int | None = None  # hot now, not hot in the previous pass (the working set moved)
    cooled_resident_fraction: float | None = None  # hot in the previous pass, cold now, and still resident


@dataclass
class HeatMap:
    """Aged vs touched counts along one memslot, in HEATMAP_BINS bins.

    Bin i covers the slot's pages [i*pages//bins, (i+1)*pages//bins).
    """

    slot: int | None  # None: a watched VM's range (no KVM slot id), named by hva_start
    pages: int
    bins: int
    aged: list[int]  # aging visits per bin (sum over the bin's pages)
    touched: list[int] | None  # epochs that touched a page, summed per bin; None: unknown (a watched VM)
    hva_start: int | None = None  # the memslot's host-virtual start
    resident: list[int] | None = None  # pages present in the process's page table (pagemap), per bin
    referenced: list[int] | None = None  # of those, pages with PG_referenced set (kpageflags), per bin

    @classmethod
    def from_pages(cls, memslot: Memslot, aged: np.ndarray | None, touched: np.ndarray | None,
                   bins: int = HEATMAP_BINS) -> HeatMap:
        """Bin per-page counts of ``memslot`` (index i is its page i; missing pages count 0, None is all 0)."""
        pages = memslot.pages
        bins = min(bins, pages)
        edges = (np.arange(bins, dtype=np.int64) * pages) // bins

        def binned(counts: np.ndarray | None) -> list[int]:
            per_page = np.zeros(pages, dtype=np.int64)
            if counts is not None:
                per_page[: min(pages, len(counts))] = counts[:pages]
            return [int(x) for x in np.add.reduceat(per_page, edges)]

        return cls(memslot.slot, pages, bins, binned(aged), binned(touched), memslot.hva_start)

    @classmethod
    def from_host_pages(cls, memslot: Memslot, aged: np.ndarray | None, resident: np.ndarray | None,
                        referenced: np.ndarray | None, bins: int = HEATMAP_BINS) -> HeatMap:
        """A watched VM's range: aged vs what the host's page tables and page flags show (touched unknown)."""
        hm = cls.from_pages(memslot, aged, None, bins)
        edges = (np.arange(hm.bins, dtype=np.int64) * hm.pages) // hm.bins

        def binned(flags: np.ndarray | None) -> list[int] | None:
            if flags is None:
                return None
            per_page = np.zeros(hm.pages, dtype=np.int64)
            per_page[: min(hm.pages, len(flags))] = flags[: hm.pages]
            return [int(x) for x in np.add.reduceat(per_page, edges)]

        hm.touched, hm.resident, hm.referenced = None, binned(resident), binned(referenced)
        return hm

    @classmethod
    def from_gfn_counts(cls, memslot: Memslot, aged: Mapping[int, int], touched: Mapping[int, int],
                        bins: int = HEATMAP_BINS) -> HeatMap:
        """Bin per-gfn counts (absolute gfns; others ignored) over ``memslot``."""

        def per_page(counts: Mapping[int, int]) -> np.ndarray:
            out = np.zeros(memslot.pages, dtype=np.int64)
            for gfn, n in counts.items():
                if 0 <= gfn - memslot.gfn_start < memslot.pages:
                    out[gfn - memslot.gfn_start] += n
            return out

        return cls.from_pages(memslot, per_page(aged), per_page(touched), bins)


@dataclass
class WatchTarget:
    """The process a watch report is about."""

    pid: int
    comm: str
    command: list[str]  # its argv
    vcpu_tids: list[int | None]  # thread id per vCPU index; None until the vCPU first ran
    vm_fds: int  # kvm-vm file descriptors it holds (more than one: events of both VMs mix)
    ram_source: str  # where the RAM ranges came from: qmp or smaps
    memcg: str | None = None  # its memory cgroup, as /proc/<pid>/cgroup names it
    qmp_socket: str | None = None
    rescans: int = 0  # times the ranges were read again during the watch
    range_changes: int = 0  # rescans that found different ranges (the probes followed them)
    exited_ns: int | None = None  # CLOCK_MONOTONIC when the process was found gone, if it exited


@dataclass
class PassiveSample:
    """What the host shows of a watched VM at one interval's end, besides the traced events."""

    t_offset_ns: int  # from trace_window.start_ns
    rss_bytes: int | None = None  # smaps Rss over the RAM ranges
    referenced_bytes: int | None = None  # smaps Referenced over the RAM ranges
    pages_4k: int | None = None  # VM stat gauges (read-only debugfs or QMP query-stats)
    pages_2m: int | None = None
    workingset_refault: int | None = None  # memcg counter (cumulative), anon + file where split


@dataclass
class GuestFault:
    message: str
    registers: dict[str, int] = field(default_factory=dict)


@dataclass
class Report:
    kind: str = KIND
    schema_version: int = SCHEMA_VERSION
    report_kind: ReportKind = ReportKind.EXPERIMENT
    complete: bool = False  # set True only when the run finished normally
    incomplete_reason: str | None = None
    kvmctl_version: str = __version__
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    command_line: list[str] = field(default_factory=list)
    host: HostFacts = field(default_factory=HostFacts)
    spec: dict[str, Any] = field(default_factory=dict)
    probes: Probes = field(default_factory=Probes)
    trace_window: TraceWindow = field(default_factory=TraceWindow)
    memslots: list[Memslot] = field(default_factory=list)
    aging: Aging = field(default_factory=Aging)
    histograms: dict[str, list[Bucket]] = field(default_factory=dict)
    contention: Contention = field(default_factory=Contention)
    ground_truth: GroundTruth = field(default_factory=GroundTruth)
    fallback: Fallback = field(default_factory=Fallback)
    spte: Spte = field(default_factory=Spte)
    lost_events: int | None = None
    epochs: list[EpochRow] = field(default_factory=list)
    passes: list[PassRow] = field(default_factory=list)
    heatmaps: list[HeatMap] = field(default_factory=list)
    vm_stats: dict[str, int | list[int]] = field(default_factory=dict)
    vcpu_stats: dict[str, int | list[int]] = field(default_factory=dict)  # watch with --qmp: summed over vCPUs
    repeats: list[dict[str, float | None]] = field(default_factory=list)
    guest_fault: GuestFault | None = None
    target: WatchTarget | None = None  # report_kind watch: the watched process
    passive: list[PassiveSample] = field(default_factory=list)  # report_kind watch: per interval
    memcg_stats: dict[str, int] = field(default_factory=dict)  # report_kind watch: memory.stat deltas over the window
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dump(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        """Build from a current-schema dict; UsageError names a bad field."""
        report = load(cls, data, "")
        # Reports written before these figures had keys of their own carry what they are made of.
        old_remapped = (data.get("spte") or {}).get("refaults")
        if "remapped" not in (data.get("spte") or {}) and isinstance(old_remapped, int):
            report.spte.remapped = old_remapped
        a = report.aging
        if "ours_calls" not in (data.get("aging") or {}) and a.calls is not None and a.by_task:
            ours = [t for t in a.by_task if t.task_class is TaskClass.OURS]
            a.ours_calls, a.ours_pages = sum(t.calls for t in ours), sum(t.pages for t in ours)
        return report

    def mark_not_observable(self, figure: str, reason: str) -> None:
        """Set a figure (dotted name) to null and record why."""
        set_figure(self, figure, None)
        self.probes.not_observable[figure] = reason

    def reason_for(self, figure: str) -> str:
        """Why a null figure is null, in words fit for the user."""
        parts = figure.split(".")
        for n in range(len(parts), 0, -1):  # a whole measurement or object may be marked
            reason = self.probes.not_observable.get(".".join(parts[:n]))
            if reason is not None:
                return reason
        if not self.complete:
            return "the run was cut short first"
        return "no reason recorded"

    def unexplained_nulls(self) -> list[str]:
        """Required figures that are null without a recorded reason."""
        return [
            k
            for k in REQUIRED_FIGURES
            if get_figure(self, k) is None and self.reason_for(k) == "no reason recorded"
        ]


__all__ = ["Bucket", "Memslot", "TaskClass", "TraceWindow", "WaiterClass"]
