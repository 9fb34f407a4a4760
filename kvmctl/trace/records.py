"""Plain records the tracer hands out, and the kernel-side enums they index.

The enums mirror the ones in ebpf/*.c (a unit test parses the C sources and
compares); the task and waiter classes, shared with the report, live in
:mod:`kvmctl.vocab`. Records carry counts exactly as the maps held them: what a number
means is decided by experiment/ and report/, not here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from kvmctl.kvm.memslot import Memslot
from kvmctl.vocab import Bucket, TaskClass, TraceWindow, WaiterClass



# Configuration words of every program: ebpf/ranges.h enum cfg
Cfg = enum.IntEnum("Cfg", ["NR_RANGES", "VM_TGID", "START_NS", "END_NS", "NR_OTHERS"], start=0, module=__name__)


class EventKind(enum.IntEnum):
    """ebpf/aging.c enum event_kind: which mmu-notifier tracepoint fired."""

    AGE = 0  # kvm:kvm_age_hva (clear_young, clear_flush_young)
    TEST_AGE = 1  # kvm:kvm_test_age_hva (test_young)
    UNMAP = 2  # kvm:kvm_unmap_hva_range (invalidate_range_start)
    TEST_CLEAR_YOUNG = 3  # kvm:kvm_age_notifier: requests the lockless test_clear_young hook answered

    @property
    def label(self) -> str:
        return self.name.lower()


# ebpf/aging.c enum aging_lost
AgingLost = enum.IntEnum("AgingLost", ["TASKS_FULL", "BUCKET_OVERFLOW", "GFN_CLIPPED", "GFN_INDEX"], start=0,
                         module=__name__)


# ebpf/spte.c enum spte_count
SpteCount = enum.IntEnum("SpteCount", ["SET_SPTE", "REFAULT", "SP_CREATED", "SP_EXISTING", "SPTE_CHANGED", "BITS_CLEARED"], start=0, module=__name__)


# ebpf/spte.c enum spte_lost
SpteLost = enum.IntEnum("SpteLost", ["GFN_INDEX", "AGING_TIDS_FULL", "HARVEST_CLIPPED"], start=0, module=__name__)


class HarvestFlag(enum.IntFlag):
    """ebpf/spte.c enum harvest_flag: what happened to one gfn during a pass (MAPPED is state)."""

    MAPPED = 1
    AGED = 2
    AGED_MAPPED = 4
    CLEARED = 8
    SET = 16
    UNMAPPED = 32


# ebpf/locks.c enum locks_lost; STACK: counted without a stack, a partial record, not a lost event
LocksLost = enum.IntEnum("LocksLost", ["THREADS_FULL", "NO_BEGIN", "STACK", "ENTRIES_FULL"], start=0, module=__name__)


class FuncRole(enum.IntEnum):
    """ebpf/funcs.c enum fn_role: what a probed aging function is."""

    OUTER_AGE = 0  # kvm_age_gfn: the arch entry of clear_young
    OUTER_TEST = 1  # kvm_test_age_gfn: the arch entry of test_young
    TDP = 2  # the TDP MMU walker
    RMAP = 3  # the rmap walker
    OTHER = 4  # e.g. a test_clear_young notifier of a patched kernel


# ebpf/funcs.c enum funcs_lost
FuncsLost = enum.IntEnum("FuncsLost", ["ENTRY_FULL", "NO_ENTRY"], start=0, module=__name__)


class AgingPath(enum.IntEnum):
    """Path bits an outer aging call collected (ebpf/funcs.c enum path_bits)."""

    NONE = 0
    TDP = 1
    RMAP = 2
    BOTH = 3

    @property
    def label(self) -> str:
        return self.name.lower()


class AgeOp(enum.IntEnum):
    """ebpf/notifier.c enum age_op: the MMU notifier's accessed-bit op a request came through."""

    TEST_CLEAR_YOUNG = 0  # the lockless harvest hook of the test_clear_young series
    CLEAR_FLUSH_YOUNG = 1  # eviction's rmap walk (folio_referenced)
    CLEAR_YOUNG = 2  # idle page tracking, DAMON
    TEST_YOUNG = 3

    @property
    def label(self) -> str:
        return self.name.lower()


class NotifierPath(enum.IntEnum):
    """ebpf/notifier.c enum age_path: how KVM answered an aging request (kvm:kvm_age_notifier)."""

    LOCKLESS = 0  # no mmu_lock
    LOCKLESS_RMAP = 1  # TDP MMU without mmu_lock, shadow-MMU rmaps under it
    REFUSED_NESTED = 2  # the hook declined: the VM has shadow roots (a nested guest ran)
    REFUSED_MMU = 3  # the hook declined: no TDP MMU or no accessed bits
    LOCKED = 4  # the mmu_lock-held ops

    @property
    def label(self) -> str:
        return {NotifierPath.LOCKLESS_RMAP: "lockless+rmap", NotifierPath.REFUSED_NESTED: "refused:nested",
                NotifierPath.REFUSED_MMU: "refused:mmu"}.get(self, self.name.lower())

    @property
    def takes_mmu_lock(self) -> bool:
        return self in (NotifierPath.LOCKLESS_RMAP, NotifierPath.LOCKED)

    @property
    def answered_by_hook(self) -> bool:
        return self in (NotifierPath.LOCKLESS, NotifierPath.LOCKLESS_RMAP)

    @property
    def refused(self) -> bool:
        return self in (NotifierPath.REFUSED_NESTED, NotifierPath.REFUSED_MMU)


# ebpf/notifier.c enum notifier_lost
NotifierLost = enum.IntEnum("NotifierLost", ["BAD_FIELD", "BEGIN_FULL"], start=0, module=__name__)


@dataclass
class TraceTarget:
    """What to trace: the VM process, its memslots and our own ager threads."""

    vm_tgid: int
    memslots: list[Memslot]
    ager_tids: set[int] = field(default_factory=set)
    # [start, end) pieces of the memslots' hva ranges that another KVM process maps too: events
    # there may be that process's (the tracepoints carry no VM), so aging.c counts them apart
    shared: list[tuple[int, int]] = field(default_factory=list)

    @property
    def guest_pages(self) -> int:
        return sum(m.pages for m in self.memslots)

    def index_bases(self) -> list[int]:
        """Per-gfn array index of each memslot's first page (memslots laid end to end)."""
        bases, base = [], 0
        for m in self.memslots:
            bases.append(base)
            base += m.pages
        return bases


@dataclass
class CallCount:
    calls: int = 0
    pages: int = 0


@dataclass
class TaskCount:
    """Aging calls one task made on our memory."""

    pid: int
    tgid: int
    comm: str
    kind: str
    calls: int
    pages: int


@dataclass
class AgingCounts:
    """kvm_age_hva & co. on our memslots: by kind and task class, and by task."""

    by_kind_class: dict[str, dict[str, CallCount]]
    by_task: list[TaskCount]
    ambiguous: dict[str, CallCount] = field(default_factory=dict)  # kind label -> events on shared addresses

    def total(self, kind: EventKind, classes: tuple[TaskClass, ...] | None = None) -> CallCount:
        row = self.by_kind_class.get(kind.label, {})
        wanted = {c.value for c in (classes or tuple(TaskClass))}
        out = CallCount()
        for label, cc in row.items():
            if label in wanted:
                out.calls += cc.calls
                out.pages += cc.pages
        return out


@dataclass
class AgingSeries:
    """Calls and pages per time bucket: arrays shaped (buckets, kinds, classes)."""

    start_ns: int
    bucket_ns: int
    calls: np.ndarray
    pages: np.ndarray


@dataclass
class PerGfnCounts:
    """Per-page counters indexed like TraceTarget.index_bases(); ``cap`` pages at most."""

    memslots: list[Memslot]
    cap: int
    by_kind: dict[str, np.ndarray]  # EventKind label -> uint64 array of cap entries

    def by_memslot(self, kind: EventKind) -> list[tuple[Memslot, np.ndarray]]:
        """Each memslot with the counts of its pages (index i is gfn m.gfn_start + i), cut at the cap."""
        out, base = [], 0
        for m in self.memslots:
            out.append((m, self.by_kind[kind.label][base:min(base + m.pages, self.cap)]))
            base += m.pages
        return out


@dataclass
class NotifierCount:
    calls: int = 0
    pages: int = 0  # pages asked about, inside our memslots
    young: int = 0  # accessed pages found
    cleared: int = 0  # of those, in requests that cleared what they found
    timed: int = 0  # requests whose start was seen (latency known)
    total_ns: int = 0  # their summed latency
    max_ns: int = 0

    def add(self, other: NotifierCount) -> None:
        self.calls += other.calls
        self.pages += other.pages
        self.young += other.young
        self.cleared += other.cleared
        self.timed += other.timed
        self.total_ns += other.total_ns
        self.max_ns = max(self.max_ns, other.max_ns)


@dataclass
class NotifierCounts:
    """kvm:kvm_age_notifier on our memslots, per (op, path, task class)."""

    cells: dict[tuple[AgeOp, NotifierPath, TaskClass], NotifierCount]
    latency: dict[AgeOp, list[Bucket]] = field(default_factory=dict)  # per op, where request starts are traced

    def total(self, ops: tuple[AgeOp, ...] | None = None, paths: tuple[NotifierPath, ...] | None = None,
              classes: tuple[TaskClass, ...] | None = None) -> NotifierCount:
        out = NotifierCount()
        for (op, path, cls), count in self.cells.items():
            if (ops is None or op in ops) and (paths is None or path in paths) and \
                    (classes is None or cls in classes):
                out.add(count)
        return out

    def minus(self, earlier: NotifierCounts) -> NotifierCounts:
        """The requests between an earlier snapshot and this one."""
        cells = {}
        for key, count in self.cells.items():
            before = earlier.cells.get(key, NotifierCount())
            cells[key] = NotifierCount(count.calls - before.calls, count.pages - before.pages,
                                       count.young - before.young, count.cleared - before.cleared,
                                       count.timed - before.timed, count.total_ns - before.total_ns,
                                       count.max_ns)  # the max over the window so far
        return NotifierCounts(cells)


@dataclass
class SpteCounts:
    set_spte: int
    refaults: int
    shadow_pages_created: int
    shadow_pages_existing: int
    spte_changed: int | None  # None: kvm_tdp_mmu_spte_changed not attached
    bits_cleared: int | None
    set_levels: dict[int, int]
    shadow_page_levels: dict[int, int]
    mappings_per_gfn: np.ndarray
    cleared_per_gfn: np.ndarray | None


@dataclass
class ContentionRow:
    """One {stack, waiter class, lock} key of lock:contention_*, perf-lock style."""

    stack_id: int
    waiter: WaiterClass
    lock_addr: int
    lock_type: str
    caller: str
    stack: list[str]
    total_ns: int
    max_ns: int
    count: int
    mmu_lock: bool
    behind_aging_ns: int = 0  # of total_ns, while a locked aging request on our VM was in progress

    @property
    def avg_ns(self) -> float:
        return self.total_ns / self.count if self.count else 0.0


@dataclass
class FuncLatency:
    """One probed kernel function."""

    function: str
    role: str
    calls: int
    nonzero: int  # returned true (young)
    ret_sum: int
    total_ns: int
    max_ns: int
    hist: list[Bucket]


@dataclass
class TraceResult:
    """Everything one trace window produced; None where the probe was not attached."""

    window: TraceWindow
    chosen: dict[str, str]
    not_observable: dict[str, str]
    aging: AgingCounts | None = None
    series: AgingSeries | None = None
    per_gfn: PerGfnCounts | None = None
    spte: SpteCounts | None = None
    contention: list[ContentionRow] | None = None
    wait_hist: dict[WaiterClass, list[Bucket]] | None = None
    funcs: list[FuncLatency] | None = None
    paths: dict[str, dict[str, int]] | None = None  # "age"/"test_age" -> path label -> calls
    notifier: NotifierCounts | None = None  # kvm:kvm_age_notifier (kernels with the test_clear_young series)
    aging_sections: bool = False  # contention rows carry behind_aging_ns
    read_ns: tuple[int, int] | None = None  # CLOCK_MONOTONIC around the read of running_totals()
    lost: dict[str, int] = field(default_factory=dict)  # events missing from some count, by cause
    partial: dict[str, int] = field(default_factory=dict)  # events counted without a detail (e.g. their stack)
    notes: list[str] = field(default_factory=list)

    @property
    def lost_events(self) -> int:
        return sum(self.lost.values())
